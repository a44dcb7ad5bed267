"""Examples on disk, read the same way by every stage: JSONL (instruction, chat or preference
form), CSV with a column mapping, or a directory of them.

The preference form is TRL's: ``prompt`` (text, or messages), ``chosen`` and ``rejected`` (text,
or assistant messages); its record holds the prompt and the chosen answer as ``messages`` and the
rejected answer apart (``Record.rejected``), so cleaning, splits and token counts treat it as the
chat record of its chosen answer.

Validation reports every bad record (file, line, field, why) before anything uses them. Which
split a record belongs to is decided in ``enclave.splits``.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from enclave.errors import EnclaveError

SPLITS = ("train", "validation", "test")
ROLES = ("system", "user", "assistant")
MAX_SHOWN = 40


@dataclass
class Record:
    """One example as chat messages; the last message is the assistant's answer."""

    messages: list[dict[str, str]]
    source: str
    group: str | None = None
    split: str | None = None
    meta: dict = field(default_factory=dict)
    rejected: list[dict[str, str]] | None = None  # a preference record's answer not preferred

    @property
    def answer(self) -> str:
        """The answer: the content of the last (assistant) message."""
        return self.messages[-1]["content"]

    @property
    def text(self) -> str:
        """The content of every message, prompt and answer, joined with newlines."""
        return "\n".join(m["content"] for m in self.messages)

    @property
    def prompt_text(self) -> str:
        """The question side: every message but the answer."""
        return "\n".join(m["content"] for m in self.messages[:-1])


def _listed(items: list[str]) -> str:
    shown = items[:MAX_SHOWN] + ([f"... and {len(items) - MAX_SHOWN} more"] if len(items) > MAX_SHOWN else [])
    return "\n".join(f"  - {p}" for p in shown)


class DataError(EnclaveError):
    """Every bad record, listed, and every record cleaning would drop besides; nothing was trained."""

    def __init__(self, problems: list[str], dropped: list[str] | None = None) -> None:
        self.problems, self.dropped = problems, dropped or []
        also = f"\nand {len(self.dropped)} record(s) cleaning drops:\n{_listed(self.dropped)}" if self.dropped else ""
        super().__init__(
            f"{len(problems)} invalid record(s); nothing was trained:\n{_listed(problems)}{also}",
            fix="each record needs instruction + output (input, group, split optional) or messages "
            "[{role, content}, ...] ending with an assistant turn; `enclave tune check-data PATH` re-checks",
        )


def datasets_dir():
    """Where the shipped data sets live (tune/datasets, package data that every stage may read)."""
    return resources.files("tune") / "datasets"


def builtin_datasets() -> list[str]:
    """Names of the shipped data sets (``builtin:NAME``)."""
    return sorted(p.name[:-6] for p in datasets_dir().iterdir() if p.name.endswith(".jsonl"))


def resolve_path(path: str, setting: str = "data.path") -> Path:
    """A file or directory path, or ``builtin:NAME`` for a shipped data set.

    Args:
        path: the path as the user gave it.
        setting: the setting that named it, for error messages (``data.path``, ``calibration.source``).

    Raises:
        EnclaveError: no such built-in data set, or no such path.
    """
    if path.startswith("builtin:"):
        name = path.split(":", 1)[1]
        shipped = datasets_dir() / f"{name}.jsonl"
        if not shipped.is_file():
            raise EnclaveError(
                f"{setting}: no built-in data set {name!r}", fix=f"built-in: {', '.join(builtin_datasets())}"
            )
        return Path(str(shipped))
    p = Path(path).expanduser()
    if not p.exists():
        raise EnclaveError(
            f"{setting} {path!r} does not exist",
            fix="give a JSONL or CSV file, a directory of them, or builtin:clinical_legal",
        )
    return p


def load_records(path: str, columns: dict[str, str] | None = None, setting: str = "data.path") -> list[Record]:
    """Read and validate every record under ``path``.

    Args:
        path: a JSONL or CSV file, a directory of them, or ``builtin:NAME``.
        columns: CSV only: our field names mapped to the file's column names.
        setting: the setting that named ``path``, for error messages.

    Returns:
        Every record, in file order (files sorted by name).

    Raises:
        DataError: any invalid record (all of them listed).
        EnclaveError: no such path, or no records at all.
    """
    records, problems = read_records(path, columns, setting)
    if problems:
        raise DataError(problems)
    return records


def read_records(
    path: str, columns: dict[str, str] | None = None, setting: str = "data.path"
) -> tuple[list[Record], list[str]]:
    """Every valid record under ``path`` and every problem of the invalid ones (``load_records``
    without raising on them, so a check can still report what cleaning does to the rest).

    Raises:
        EnclaveError: no such path, or no records at all.
    """
    root = resolve_path(path, setting)
    files = sorted(p for p in root.rglob("*") if p.suffix in (".jsonl", ".csv")) if root.is_dir() else [root]
    if not files:
        raise EnclaveError(f"{setting} {path!r}: no .jsonl or .csv files in the directory")
    records, problems = [], []
    for f in files:
        reader = _read_csv if f.suffix == ".csv" else _read_jsonl
        got, bad = reader(f, columns or {})
        records += got
        problems += bad
    if not records and not problems:
        raise EnclaveError(
            f"{setting} {path!r} holds no records (empty file)", fix="add examples, one JSON object per line"
        )
    return records, problems


def _read_jsonl(path: Path, _columns: dict) -> tuple[list[Record], list[str]]:
    records, problems = [], []
    for lineno, raw in enumerate(path.read_bytes().splitlines(), start=1):
        where = f"{path.name}:{lineno}"
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            problems.append(f"{where}: not valid UTF-8 (byte {exc.start}); re-save the file as UTF-8")
            continue
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            problems.append(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})")
            continue
        rec, errs = parse_record(obj, where)
        records += [rec] if rec else []
        problems += errs
    return records, problems


def _read_csv(path: Path, columns: dict) -> tuple[list[Record], list[str]]:
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        return [], [f"{path.name}: not valid UTF-8 (byte {exc.start}); re-save the file as UTF-8"]
    reader = csv.DictReader(io.StringIO(text))
    header = reader.fieldnames or []
    mapping = {k: columns.get(k, k) for k in ("instruction", "input", "output", "group", "split")}
    missing = [
        f"data.columns.{k} -> {v!r}" for k, v in mapping.items() if k in ("instruction", "output") and v not in header
    ]
    if missing:
        return [], [f"{path.name}: column(s) not found: {', '.join(missing)}; the header has: {', '.join(header)}"]
    records, problems = [], []
    for lineno, row in enumerate(reader, start=2):
        obj = {k: row[v] for k, v in mapping.items() if v in header and row.get(v) not in (None, "")}
        obj.setdefault("output", row.get(mapping["output"], ""))
        obj.setdefault("instruction", row.get(mapping["instruction"], ""))
        rec, errs = parse_record(obj, f"{path.name}:{lineno}")
        records += [rec] if rec else []
        problems += errs
    return records, problems


def parse_record(obj, where: str) -> tuple[Record | None, list[str]]:
    """Validate one JSON object; return the record or the problems."""
    if not isinstance(obj, dict):
        return None, [f"{where}: expected a JSON object, got {type(obj).__name__}"]
    problems = []
    group, split = obj.get("group"), obj.get("split")
    if group is not None and not isinstance(group, str):
        problems.append(f"{where}: group: expected a string, got {type(group).__name__}")
    if split is not None and split not in SPLITS:
        problems.append(f"{where}: split: {split!r} is not one of {', '.join(SPLITS)}")
    rejected = None
    if "chosen" in obj or "rejected" in obj:
        messages, rejected, errs = _preference(obj, where)
    elif "messages" in obj:
        messages, errs = _chat(obj["messages"], where)
    elif "instruction" in obj or "output" in obj:
        messages, errs = _instruction(obj, where)
    else:
        messages, errs = (
            None,
            [
                f"{where}: needs instruction and output, messages, or prompt, chosen and rejected "
                f"(found keys: {', '.join(sorted(obj)) or 'none'})"
            ],
        )
    problems += errs
    if problems:
        return None, problems
    known = ("messages", "instruction", "input", "output", "group", "split", "prompt", "chosen", "rejected")
    meta = {k: v for k, v in obj.items() if k not in known}
    return Record(messages, where, group, split, meta, rejected), []


def _preference(obj: dict, where: str) -> tuple[list | None, list | None, list[str]]:
    """TRL's preference form: prompt (text or messages), chosen and rejected (text or assistant messages)."""
    problems = []
    parts = {}
    for key, role in (("prompt", "user"), ("chosen", "assistant"), ("rejected", "assistant")):
        value = obj.get(key)
        if value is None:
            problems.append(f"{where}: {key}: missing (a preference record has prompt, chosen and rejected)")
        elif isinstance(value, str):
            parts[key] = [{"role": role, "content": value}]
        elif (
            isinstance(value, list)
            and value
            and all(isinstance(m, dict) and m.get("role") in ROLES and isinstance(m.get("content"), str) for m in value)
        ):
            parts[key] = [{"role": m["role"], "content": m["content"]} for m in value]
        else:
            problems.append(f"{where}: {key}: expected text or a list of {{role, content}} messages")
    for key in ("chosen", "rejected"):
        if key in parts and any(m["role"] != "assistant" for m in parts[key]):
            problems.append(f"{where}: {key}: only assistant messages (the prompt holds the rest)")
    if "prompt" in parts and not any(m["role"] == "user" for m in parts["prompt"]):
        problems.append(f"{where}: prompt: needs at least one user message")
    if problems:
        return None, None, problems
    return parts["prompt"] + parts["chosen"], parts["rejected"], []


def _instruction(obj: dict, where: str) -> tuple[list | None, list[str]]:
    problems = []
    for key, required in (("instruction", True), ("input", False), ("output", True)):
        if key not in obj:
            if required:
                problems.append(f"{where}: {key}: missing")
        elif not isinstance(obj[key], str):
            problems.append(f"{where}: {key}: expected a string, got {type(obj[key]).__name__}")
    if problems:
        return None, problems
    prompt = obj["instruction"] + (f"\n\n{obj['input']}" if obj.get("input") else "")
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": obj["output"]}], []


def _chat(messages, where: str) -> tuple[list | None, list[str]]:
    if not isinstance(messages, list) or not messages:
        return None, [f"{where}: messages: expected a non-empty list"]
    problems = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            problems.append(f"{where}: messages[{i}]: expected {{role: system|user|assistant, content: string}}")
    if not problems and messages[-1]["role"] != "assistant":
        problems.append(f"{where}: messages: the last message must be the assistant's answer")
    if not problems and not any(m["role"] == "user" for m in messages):
        problems.append(f"{where}: messages: needs at least one user message")
    return (None if problems else [{"role": m["role"], "content": m["content"]} for m in messages]), problems
