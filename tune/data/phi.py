"""Protected health information and personal data in training files: names, dates, record numbers
and other ids, phone numbers, addresses, emails, found with philter-lite (UCSF's clinical PHI
filter: about 180 regular expressions and name, word and place lists, all inside the wheel), and
a redacted copy on request (`enclave tune check-data FILE --redact OUT`).

Nothing is downloaded: philter's part-of-speech step calls NLTK's tagger, whose data is not on
any registry this machine reaches, so it is given a tagger by capitalisation (a capitalised word
is a proper noun); lower-case names are then missed. The recall on the labelled sample shipped
with the tests (``tests/tune/data/phi_sample.jsonl``) is in the README and asserted there.
"""

from __future__ import annotations

import functools
import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from enclave.errors import EnclaveError

# philter's filter keywords (their first part) -> the types the report shows
_TYPES = {
    "dates": "DATE",
    "mrn_id": "ID",
    "addresses": "ADDRESS",
    "organizations": "ADDRESS",
    "ucsf_regex": "ADDRESS",
    "age": "AGE",
    "salutations": "NAME",
    "firstnames": "NAME",
    "lastnames": "NAME",
    "regex_context": "NAME",
}
TYPES = ("NAME", "DATE", "ID", "PHONE", "ADDRESS", "EMAIL", "URL", "AGE", "OTHER")
CHUNK = 1500  # philter's time grows faster than the text: long texts go in pieces (at whitespace)


@dataclass(frozen=True)
class Span:
    start: int
    end: int
    type: str


@dataclass
class PhiReport:
    """Spans found per type, and the records (file and line) they are in."""

    counts: Counter = field(default_factory=Counter)
    lines: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    records: int = 0  # records with at least one span

    def as_dict(self) -> dict:
        return {"counts": dict(self.counts), "lines": {k: v for k, v in self.lines.items()}, "records": self.records}


def _tag(words):
    """The tagger philter is given: CD for numbers, NNP for capitalised words, NN otherwise. A
    sentence's first word is capitalised anyway: it is NNP only when the next word is too
    ("Maria Lopez was seen", not "Define BID")."""
    tags, start = [], True
    for i, w in enumerate(words):
        if w.isspace():
            tags.append((w, "SP"))
            continue
        capital = w[:1].isupper()
        if capital and start:
            following = next((x for x in words[i + 1 :] if not x.isspace()), "")
            capital = following[:1].isupper()
        tags.append((w, "CD" if w.isdigit() else "NNP" if capital else "NN"))
        start = w[-1:] in ".!?:;\n" or not w[-1:].isalnum() and w[-1:] not in ",)'\""
    return tags


@functools.cache
def _filters():
    import importlib.resources
    import tomllib

    try:
        import philter_lite
        import philter_lite.philter as internals
    except ImportError:
        raise EnclaveError(
            "the PHI check needs philter-lite", fix="pip install 'enclave-llm[tune]' (make install does)"
        ) from None
    if not (hasattr(internals, "_get_pos") and hasattr(internals, "_get_clean")):
        raise EnclaveError(
            "this philter-lite has no _get_pos/_get_clean to give an offline tagger to",
            fix="install the version constraints.txt pins (philter-lite==0.6.0)",
        )
    internals._get_pos = lambda text: _tag(internals._get_clean(text))  # NLTK's tagger data is not installable
    with (importlib.resources.files("philter_lite") / "configs" / "philter_delta.toml").open("rb") as f:
        raw = tomllib.load(f)["filters"]
    for d in raw:
        keyword = d.get("keyword", "")
        if not d["exclude"]:
            continue
        if keyword.startswith("contact."):
            d["phi_type"] = {"contact.email": "EMAIL", "contact.url": "URL"}.get(keyword, "PHONE")
        else:
            d["phi_type"] = _TYPES.get(keyword.split(".")[0], "ID" if keyword.startswith("mrn") else "OTHER")
    return philter_lite, [philter_lite.filter_from_dict(d) for d in raw], sorted(set(TYPES))


def find(text: str) -> list[Span]:
    """The PHI spans of ``text``, merged where they overlap (the first type found wins) or where
    only blanks part two of one type ("John" "Smith": one name)."""
    if not text.strip():
        return []
    philter, filters, types = _filters()
    spans: list[Span] = []
    for offset, piece in _chunks(text):
        _include, _exclude, tracker = philter.detect_phi(piece, filters, phi_type_list=types)
        for e in tracker.phi:
            end = e.stop
            while e.phi_type in ("EMAIL", "URL") and end > e.start and piece[end - 1] in ".,;:)":
                end -= 1  # "write to a@b.org." ends the sentence, not the address
            spans.append(Span(offset + e.start, offset + end, e.phi_type))
    merged: list[Span] = []
    for s in sorted(spans, key=lambda s: (s.start, -s.end)):
        last = merged[-1] if merged else None
        if last is not None and (
            s.start < last.end or (s.type == last.type and not text[last.end : s.start].strip(" \t"))
        ):
            merged[-1] = Span(last.start, max(last.end, s.end), last.type)
        else:
            merged.append(s)
    return merged


def _chunks(text: str):
    start = 0
    while start < len(text):
        end = min(len(text), start + CHUNK)
        if end < len(text):
            cut = text.rfind(" ", start + CHUNK // 2, end)
            end = cut if cut > start else end
        yield start, text[start:end]
        start = end


def redact(text: str) -> str:
    """``text`` with each PHI span replaced by its type in brackets ([NAME], [DATE], ...)."""
    out, at = [], 0
    for s in find(text):
        out += [text[at : s.start], f"[{s.type}]"]
        at = s.end
    return "".join(out) + text[at:]


def scan(records) -> PhiReport:
    """Find PHI in every message (and rejected answer) of ``records``."""
    report = PhiReport()
    for rec in records:
        texts = [m["content"] for m in rec.messages + (rec.rejected or [])]
        found = [s for t in texts for s in find(t)]
        if found:
            report.records += 1
        for kind, n in Counter(s.type for s in found).items():
            report.counts[kind] += n
            report.lines[kind].append(rec.source)
    return report


# JSONL keys whose values are people's words (never role, group or split names)
_TEXT_KEYS = ("instruction", "input", "output", "content", "prompt", "chosen", "rejected", "messages")


def _redact_value(value):
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, list):
        return [_redact_value(v) for v in value]
    if isinstance(value, dict):
        return {k: (_redact_value(v) if k in _TEXT_KEYS else v) for k, v in value.items()}
    return value


def redact_file(path: Path, out: Path) -> int:
    """Write a copy of a JSONL file with every PHI span in its text fields replaced; returns the
    number of lines changed. Lines that are not JSON objects are copied as they are (check-data
    reports them)."""
    from enclave.atomic import atomic_write_bytes

    path, out = Path(path), Path(out)
    if path.suffix != ".jsonl" or not path.is_file():
        raise EnclaveError(f"--redact: {path} is not a .jsonl file", fix="redact one JSONL file at a time")
    if out.resolve() == path.resolve():
        raise EnclaveError(f"--redact: {out} is the input", fix="write the redacted copy to a new file")
    lines, changed = [], 0
    for raw in path.read_text(encoding="utf-8").splitlines():
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError:
            obj = None
        if isinstance(obj, dict):
            new = {k: (_redact_value(v) if k in _TEXT_KEYS else v) for k, v in obj.items()}
            changed += new != obj
            raw = json.dumps(new, ensure_ascii=False)
        lines.append(raw)
    atomic_write_bytes(out, ("\n".join(lines) + "\n").encode())
    return changed
