"""The one exception type users see: what went wrong and how to fix it."""

from __future__ import annotations


class EnclaveError(Exception):
    """An error caused by input the user can change.

    The CLI prints it as one message (no traceback unless ``--debug``) and exits non-zero.

    Args:
        message: what is wrong, naming the field or file and the value received.
        fix: how to fix it, as an instruction ("run `enclave models pull NAME`").
    """

    exit_code = 2

    def __init__(self, message: str, fix: str | None = None) -> None:
        self.message = message
        self.fix = fix
        super().__init__(self.__str__())

    def __str__(self) -> str:
        return self.message if not self.fix else f"{self.message}\n  fix: {self.fix}"


class ConfigError(EnclaveError):
    """One or more invalid configuration values, all reported at once."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        noun = "error" if len(problems) == 1 else "errors"
        super().__init__(f"{len(problems)} config {noun} in {source}:\n{lines}")


class IntegrityError(EnclaveError):
    """An artifact whose files do not match its manifest; nothing was loaded."""

    def __init__(self, path: str, problems: list[str]) -> None:
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(
            f"artifact {path} failed verification, nothing was loaded:\n{lines}",
            fix="restore the artifact from its source (re-run the command that made it, "
            "or `enclave models pull NAME` for a base model)",
        )
