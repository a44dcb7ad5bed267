"""Plain texts shipped with Enclave (``builtin:NAME``): held-out general text, and prose calibration
and distillation may read.

Each stage reads them through this module: tune measures forgetting on the held-out text, compress
measures every artifact on it and calibrates on the others. A text has no splits: it is either
evaluation text or training text, never both (``HELDOUT`` is refused as training text).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

HELDOUT = "builtin:heldout_apache2"
"""The Apache License 2.0, about 2,600 SmolLM2 tokens of general legal English: every artifact's
perplexity and tune's forgetting check are measured on it."""
DATA_SUFFIXES = (".jsonl", ".csv")


def builtin_texts() -> list[str]:
    """Names of the shipped texts (``builtin:NAME``)."""
    return sorted(p.name[:-4] for p in resources.files(__name__).iterdir() if p.name.endswith(".txt"))


def text_file(source: str) -> Path | None:
    """The file of a text source, read whole: ``builtin:NAME`` of the shipped texts, or a file that is
    not .jsonl or .csv. None when ``source`` names a data set (``builtin:NAME`` of the shipped data
    sets, a JSONL or CSV file, a directory), of which one split is read."""
    if source.startswith("builtin:"):
        candidate = resources.files(__name__) / f"{source.split(':', 1)[1]}.txt"
        return Path(str(candidate)) if candidate.is_file() else None
    path = Path(source).expanduser()
    return path.resolve() if path.is_file() and path.suffix not in DATA_SUFFIXES else None
