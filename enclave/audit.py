"""The hash chain of the audit log, and its verifier (`enclave audit verify FILE`).

Each line of an audit file is one JSON object whose first keys are ``seq`` (1, 2, 3, ... across the
whole life of the log, rotations included) and ``prev``, the sha256 of the previous line's exact
bytes (without its newline); the first line of a chain has ``prev`` = ``GENESIS``. Editing a line
changes its hash, which no longer matches the ``prev`` of the next line; deleting or moving a line
leaves a hole in ``seq``. The log rotates by size: FILE becomes FILE.1, FILE.1 becomes FILE.2, ...,
and the first line of the new FILE chains to the last line of FILE.1, so the oldest file kept,
FILE.N, then FILE.N-1, ..., FILE.1, FILE read as one chain.

The chain shows that lines were changed, removed or reordered; it cannot show that someone rewrote
every line after an edit, or deleted whole files. For that, keep the chain's head (``verify`` prints
it) somewhere the server cannot write, or copy rotated files off the volume.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

GENESIS = "sha256:" + "0" * 64
"""The ``prev`` of the first line of a chain."""

RESUMED = "audit_resumed"
"""The ``event`` of the line a writer adds after finding a torn or unreadable end of the log."""


def line_hash(line: bytes) -> str:
    """The link to a line: ``"sha256:" + hex digest`` of its exact bytes, without the newline."""
    return "sha256:" + hashlib.sha256(line).hexdigest()


def parse_line(line: bytes) -> dict | None:
    """The JSON object of a chained audit line, or None if it is not one.

    Not one: unparseable, or no int ``seq`` or str ``prev``.
    """
    try:
        entry = json.loads(line)
    except ValueError:
        return None
    if not isinstance(entry, dict) or type(entry.get("seq")) is not int or not isinstance(entry.get("prev"), str):
        return None
    return entry


def rotated(path: str | Path) -> list[tuple[int, Path]]:
    """The rotated siblings of an audit file, ``[(1, FILE.1), (2, FILE.2), ...]``, newest first.

    Args:
        path: the live audit file (FILE).

    Returns:
        Every existing FILE.N with N a positive integer, sorted by N.
    """
    path = Path(path)
    pattern = re.compile(re.escape(path.name) + r"\.([1-9][0-9]*)")
    found = [(int(m.group(1)), p) for p in path.parent.glob(path.name + ".*") if (m := pattern.fullmatch(p.name))]
    return sorted(found)


def chain_files(path: str | Path) -> list[Path]:
    """The files of one audit log in chain order: FILE.N, ..., FILE.1, then FILE (if it exists)."""
    path = Path(path)
    return [p for _, p in reversed(rotated(path))] + ([path] if path.exists() else [])


@dataclass
class Problem:
    """The first place where the chain breaks: a file, a 1-based line number in it, and why."""

    file: Path
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.reason}"


@dataclass
class ChainReport:
    """What ``verify_chain`` found: the files and lines read, the range of the chain, and the first problem."""

    files: list[Path] = field(default_factory=list)
    lines: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    first_time: str | None = None
    last_time: str | None = None
    head: str = GENESIS
    """The hash of the last good line: the value the next line must carry as ``prev``."""
    problem: Problem | None = None

    @property
    def ok(self) -> bool:
        """True when ``verify_chain`` found no problem in the chain."""
        return self.problem is None

    @property
    def from_genesis(self) -> bool:
        """True when the oldest file kept starts the chain; False when older rotated files were deleted."""
        return self.first_seq == 1


@dataclass
class _Line:
    file: Path
    number: int
    raw: bytes  # without the newline
    ended: bool  # had a newline


def _lines(files: list[Path]) -> Iterator[_Line]:
    for path in files:
        with open(path, "rb") as fh:
            for number, raw in enumerate(fh, 1):
                ended = raw.endswith(b"\n")
                yield _Line(path, number, raw[:-1] if ended else raw, ended)


def verify_chain(path: str | Path) -> ChainReport:
    """Check an audit log and its rotated files as one hash chain, up to the first break.

    Args:
        path: the live audit file (FILE); FILE.N ... FILE.1 beside it are read first.

    Returns:
        A report of the files and lines read, the seq and time range, the head hash, and the first
        problem: a line that was edited (its hash is not the next line's ``prev``), a missing or moved
        line (a hole in ``seq``), an unreadable or torn line, or a chain that does not start at the
        beginning although no rotated file precedes it. When the oldest file kept is a rotated one
        that starts mid-chain (rotation deleted the files before it), ``first_seq`` says where it
        starts; that alone is not a problem.

    Raises:
        FileNotFoundError: if neither FILE nor any FILE.N exists.
    """
    report = ChainReport(files=chain_files(path))
    if not report.files:
        raise FileNotFoundError(f"no audit file {path} (nor rotated {Path(path).name}.N beside it)")
    lines, oldest_rotated = _lines(report.files), report.files[0] != Path(path)
    previous, prev_entry, line = None, {}, next(lines, None)
    while line is not None:
        following = next(lines, None)
        entry = parse_line(line.raw)
        report.problem = _check(line, entry, following, previous, prev_entry, oldest_rotated)
        if report.problem is not None:
            return report
        report.lines += 1
        report.first_seq = entry["seq"] if report.first_seq is None else report.first_seq
        report.last_seq, report.head = entry["seq"], line_hash(line.raw)
        report.first_time = report.first_time or entry.get("time")
        report.last_time = entry.get("time", report.last_time)
        previous, prev_entry, line = line, entry, following
    return report


def _span(first: int, last: int) -> str:
    return f"seq {first}" if first == last else f"seq {first}-{last}"


def _check(
    line: _Line,
    entry: dict | None,
    following: _Line | None,
    previous: _Line | None,
    prev_entry: dict,
    oldest_rotated: bool,
) -> Problem | None:
    """The problem with ``line`` given the line before it (None: it is the first), or None."""
    here = lambda reason: Problem(line.file, line.number, reason)  # noqa: E731
    if entry is None:
        if not line.ended:
            return here("the last line is cut short (no newline, not a complete JSON line): the file was truncated")
        after = parse_line(following.raw) if following is not None else None
        if after is not None and after.get("event") == RESUMED:
            return here(
                f"not a complete audit line: a write torn by a crash, or an edit (the server restarted and "
                f"recorded it at {following.file.name}:{following.number}, seq {after['seq']})"
            )
        return here("not an audit line (not JSON with seq and prev): edited, or a torn write")
    seq = entry["seq"]
    if previous is None:
        if entry["prev"] == GENESIS or seq == 1:
            if entry["prev"] == GENESIS and seq == 1:
                return None
            return here(f"seq {seq} with prev {entry['prev'][:15]}…: a chain starts at seq 1 with the genesis prev")
        if not oldest_rotated:
            return here(f"the chain starts at seq {seq}, and no rotated file precedes it: {_span(1, seq - 1)} missing")
        return None  # rotation deleted the older files: first_seq reports where the kept chain starts
    expected = prev_entry["seq"] + 1
    if seq > expected:
        return here(f"{_span(expected, seq - 1)} missing before this line (seq {seq}): deleted or moved")
    if seq < expected:
        return here(f"seq {seq} after seq {prev_entry['seq']}: lines out of order or repeated")
    if entry["prev"] == line_hash(previous.raw):
        return None
    # The link between `previous` and `line` is broken: either `previous` was edited (then the line
    # after `line` still links to `line`), or `line` was forged or its prev changed (then it does not).
    after = parse_line(following.raw) if following is not None else None
    if after is not None and after["prev"] == line_hash(line.raw):
        return Problem(
            previous.file,
            previous.number,
            f"edited: its sha256 is not the prev that the next line ({line.file.name}:{line.number}) recorded",
        )
    if following is None:
        return Problem(
            previous.file,
            previous.number,
            f"edited, or the prev of the last line ({line.file.name}:{line.number}) was changed",
        )
    return here(
        f"inserted or edited: its prev is not the sha256 of {previous.file.name}:{previous.number}, "
        "and the next line does not link to it"
    )
