"""Terminal output shared by the commands: one console, tables wide enough for a log file."""

from __future__ import annotations

from rich.console import Console


def console(stderr: bool = False) -> Console:
    """A rich console; when output is not a terminal (CI logs, pipes) lines are 120 wide."""
    con = Console(stderr=stderr)
    return con if con.is_terminal else Console(stderr=stderr, width=120)
