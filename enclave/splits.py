"""Train/validation/test splits, decided once for every stage.

A record's own ``split`` field wins; a record without one is placed by the hash of its
normalized content. tune trains on train and ``enclave eval`` scores test (both through tune's
cleaning, which applies this rule); compress calibrates and distils on train only through
``select_split``. tests/tune/test_records.py keeps the two in agreement, so no record the
report scores reaches calibration.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata

from enclave.records import SPLITS, Record, load_records

DEFAULT_SPLIT_RATIOS = (0.8, 0.1, 0.1)
"""Train/validation/test shares for records without a split field (tune's data.split_ratios default)."""

_SPACES = re.compile(r"[ \t\u00a0]+")
_BLANKS = re.compile(r"\n{3,}")


def normalize(text: str) -> str:
    """NFC Unicode, no control characters, single spaces, trimmed lines, at most one blank line."""
    text = unicodedata.normalize("NFC", text)
    text = "".join(c for c in text if c in "\n\t" or unicodedata.category(c)[0] != "C")
    lines = [_SPACES.sub(" ", line).strip() for line in text.split("\n")]
    return _BLANKS.sub("\n\n", "\n".join(lines)).strip()


def content_hash(record: Record) -> str:
    """sha256 of the record's messages (roles and contents) as they are, and of a preference
    record's rejected answer after them (a chat record's hash is the same as before that form)."""
    messages = record.messages + ([{"role": "rejected", "content": ""}, *record.rejected] if record.rejected else [])
    return hashlib.sha256("\x1e".join(f"{m['role']}\x1f{m['content']}" for m in messages).encode()).hexdigest()


def assign_split(record: Record, ratios: tuple[float, float, float] = DEFAULT_SPLIT_RATIOS) -> str:
    """The record's own split, else one chosen by its content hash (stable across runs and machines).

    Hash the normalized record (``normalized``), as tune's cleaning does, or the choice differs.
    """
    if record.split:
        return record.split
    u = int(content_hash(record)[:15], 16) / 16**15
    return "train" if u < ratios[0] else "validation" if u < ratios[0] + ratios[1] else "test"


def normalized(record: Record) -> Record:
    """A copy of ``record`` with every message normalized (``normalize``)."""

    def norm(messages):
        return [{"role": m["role"], "content": normalize(m["content"])} for m in messages]

    rejected = norm(record.rejected) if record.rejected else None
    return Record(norm(record.messages), record.source, record.group, record.split, dict(record.meta), rejected)


def select_split(
    records: list[Record], split: str, ratios: tuple[float, float, float] = DEFAULT_SPLIT_RATIOS
) -> list[Record]:
    """The records of one split, split as tune splits them, in file order.

    A record's own ``split`` wins; one without is placed by the hash of its normalized content
    (``assign_split``). A record whose normalized content equals a record's in another split is
    left out whatever the file order, so e.g. the train split never holds a copy of a test record.
    (Near copies are tune's cleaning's business: it drops evaluation records close to training ones.)

    Args:
        records: as ``load_records`` returns them.
        split: one of ``SPLITS``.
        ratios: train/validation/test shares for records without a split field.

    Raises:
        ValueError: ``split`` is not one of ``SPLITS``.
    """
    if split not in SPLITS:
        raise ValueError(f"split {split!r} is not one of {', '.join(SPLITS)}")
    keyed = []
    for rec in records:
        norm = normalized(rec)
        keyed.append((assign_split(norm, ratios), content_hash(norm), rec))
    elsewhere = {h for s, h, _ in keyed if s != split}
    return [rec for s, h, rec in keyed if s == split and h not in elsewhere]


def load_split(
    path: str, split: str, columns: dict[str, str] | None = None, setting: str = "data.path"
) -> list[Record]:
    """The records of one split of the data at ``path`` (``load_records``, then ``select_split``).

    Raises:
        DataError: any invalid record (all of them listed).
        EnclaveError: no such path, or no records at all.
    """
    return select_split(load_records(path, columns, setting), split)
