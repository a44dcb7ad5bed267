"""Cleaning ("quality over quantity"): normalise, drop empty and duplicate records, split
deterministically, and make sure no evaluation record is a near copy of a training one.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

from enclave.splits import assign_split, content_hash, normalize
from tune.data.records import SPLITS, Record

_WORD = re.compile(r"\w+", re.UNICODE)


@dataclass
class CleanStats:
    """What cleaning removed, by reason, and each dropped record's line and why."""

    loaded: int = 0
    empty: int = 0
    exact_duplicates: int = 0
    near_duplicates: int = 0
    leakage: int = 0
    too_long: int = 0
    examples: dict[str, list[str]] = field(default_factory=dict)
    drops: list[tuple[str, str]] = field(default_factory=list)  # (record source, why), in the order found

    def note(self, reason: str, record: Record, why: str = "") -> None:
        setattr(self, reason, getattr(self, reason) + 1)
        self.examples.setdefault(reason, [])
        if len(self.examples[reason]) < 5:
            self.examples[reason].append(record.source)
        self.drops.append((record.source, why or reason.replace("_", " ")))

    def dropped_lines(self) -> list[str]:
        """ "data.jsonl line 14: near duplicate of line 3", one per dropped record, in file order."""
        return [f"{where(s)}: {why}" for s, why in sorted(self.drops, key=lambda d: _source_key(d[0]))]


def where(source: str, beside: str | None = None) -> str:
    """A record's place for people: "data.jsonl line 9"; only "line 3" when ``beside`` (another
    record's source) is in the same file."""
    name, _, line = source.rpartition(":")
    if not line.isdigit():
        return source
    if beside is not None and beside.rpartition(":")[0] == name:
        return f"line {line}"
    return f"{name} line {line}"


def shingles(text: str, n: int = 3) -> set[str]:
    words = _WORD.findall(text.lower())
    if len(words) < n:
        return {" ".join(words)}
    return {" ".join(words[i : i + n]) for i in range(len(words) - n + 1)}


def clean(records: list[Record], ratios, threshold: float) -> tuple[dict[str, list[Record]], CleanStats]:
    """Normalise, drop empty and duplicate records, split, and remove train→eval leakage.

    Near duplicates are records whose prompts (everything but the answer) are nearly the
    same, found with MinHash LSH over word 3-grams (datasketch): a record close to an earlier
    one in the same split is dropped, and an evaluation record whose question is close to a
    training question is dropped as leakage, so test scores measure more than recall of
    memorised questions. Exact duplicates compare the whole record.
    """
    from datasketch import MinHash, MinHashLSH

    stats = CleanStats(loaded=len(records))
    kept, seen = [], {}
    for rec in records:
        rec.messages = [{"role": m["role"], "content": normalize(m["content"])} for m in rec.messages]
        if rec.rejected:
            rec.rejected = [{"role": m["role"], "content": normalize(m["content"])} for m in rec.rejected]
        blank = [m["role"] for m in rec.messages if m["role"] != "system" and not m["content"]]
        blank += ["rejected"] if rec.rejected is not None and not "".join(m["content"] for m in rec.rejected) else []
        if blank:
            stats.note("empty", rec, "empty" + ("" if len(blank) == len(rec.messages) else f" ({blank[0]} message)"))
            continue
        h = content_hash(rec)
        if h in seen:
            stats.note("exact_duplicates", rec, f"exact duplicate of {where(seen[h], rec.source)}")
            continue
        seen[h] = rec.source
        rec.split = assign_split(rec, ratios)
        kept.append(rec)
    # Train first, so evaluation records are the ones dropped when they leak.
    kept.sort(key=lambda r: SPLITS.index(r.split))
    lsh = MinHashLSH(threshold=threshold, num_perm=128)
    splits: dict[str, list[Record]] = {s: [] for s in SPLITS}
    grams = [shingles(rec.prompt_text) for rec in kept]
    for i, rec in enumerate(kept):
        mh = MinHash(num_perm=128, seed=1)
        mh.update_batch([s.encode() for s in grams[i]])
        # LSH gives candidates; the exact Jaccard similarity confirms them (no false positives).
        near = sorted(
            (kept[j] for j in lsh.query(mh) if jaccard(grams[i], grams[j]) >= threshold),
            key=lambda r: _source_key(r.source),
        )
        # a preference record and the chat record of the same correction share a question: both stay
        kind = rec.rejected is None
        same = next((o for o in near if o.split == rec.split and (o.rejected is None) == kind), None)
        if same is not None:
            stats.note("near_duplicates", rec, f"near duplicate of {where(same.source, rec.source)}")
            continue
        trained = next((other for other in near if other.split == "train"), None)
        if rec.split != "train" and trained is not None:
            why = f"{rec.split} record close to the training record at {where(trained.source, rec.source)} (leakage)"
            stats.note("leakage", rec, why)
            continue
        lsh.insert(i, mh)
        splits[rec.split].append(rec)
    for split in SPLITS:  # back to file order within each split
        splits[split].sort(key=lambda r: _source_key(r.source))
    return splits, stats


def jaccard(a: set, b: set) -> float:
    return len(a & b) / max(len(a | b), 1)


def _source_key(source: str):
    name, _, line = source.rpartition(":")
    return (name, int(line) if line.isdigit() else 0)


def group_counts(splits: dict[str, list[Record]]) -> dict[str, dict[str, int]]:
    return {s: dict(Counter(r.group or "(none)" for r in recs)) for s, recs in splits.items()}
