"""The data pipeline in one call: load → validate → clean → split → tokenize → drop over-length."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass

import numpy as np

from enclave.errors import EnclaveError
from tune.config import DataConfig
from tune.data.clean import CleanStats, clean, group_counts
from tune.data.records import SPLITS, DataError, Record, read_records, resolve_path
from tune.data.tokenize import Example, encode

log = logging.getLogger(__name__)
MAX_DROPS_KEPT = 1000  # dropped records named in the report (and so in the adapter's manifest)


@dataclass
class PreparedData:
    """Tokenized splits plus everything the data report shows."""

    records: dict[str, list[Record]]
    examples: dict[str, list[Example]]
    stats: CleanStats
    digest: str
    context_length: int | None

    def lengths(self, split: str) -> list[int]:
        return [e.length for e in self.examples[split]]

    def report(self) -> dict:
        """Counts, drops, token lengths and groups: printed by check-data, stored in the manifest."""
        s = self.stats
        lengths = [n for split in SPLITS for n in self.lengths(split)]
        hist, edges = np.histogram(lengths, bins=min(10, max(1, len(set(lengths))))) if lengths else ([], [])
        return {
            "digest": self.digest,
            "loaded": s.loaded,
            "dropped": {
                k: getattr(s, k) for k in ("empty", "exact_duplicates", "near_duplicates", "leakage", "too_long")
            },
            "dropped_examples": s.examples,
            "dropped_records": s.dropped_lines()[:MAX_DROPS_KEPT],
            "splits": {k: len(v) for k, v in self.examples.items()},
            "preference": {k: sum(r.rejected is not None for r in v) for k, v in self.records.items()},
            "groups": group_counts({k: [r for r in v] for k, v in self.records.items()}),
            "tokens": {
                "min": int(min(lengths)) if lengths else 0,
                "median": float(np.median(lengths)) if lengths else 0,
                "max": int(max(lengths)) if lengths else 0,
                "total": int(sum(lengths)),
                "histogram": {"counts": [int(c) for c in hist], "edges": [round(float(e), 1) for e in edges]},
            },
        }


def data_digest(path: str) -> str:
    """sha256 over the data files (names and bytes), recorded in the adapter's manifest."""
    root = resolve_path(path)
    files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode() + b"\0" + f.read_bytes())
    return "sha256:" + h.hexdigest()


def prepare(cfg: DataConfig, tokenizer, context_length: int | None = None) -> PreparedData:
    """Run the whole pipeline; raise before training on any invalid record or setting.

    Raises:
        DataError: invalid records (all listed).
        EnclaveError: ``max_length`` beyond the model's context.
    """
    if context_length and cfg.max_length > context_length:
        raise EnclaveError(
            f"data.max_length {cfg.max_length} is beyond the model's context length {context_length}",
            fix=f"set data.max_length={context_length} or less",
        )
    records, problems = read_records(cfg.path, cfg.columns)
    splits, stats = clean(records, cfg.split_ratios, cfg.near_duplicate_threshold)
    examples: dict[str, list[Example]] = {}
    for split, recs in splits.items():
        kept_recs, kept = [], []
        for rec in recs:
            ex = encode(tokenizer, rec, cfg.system_prompt)
            if ex.length > cfg.max_length:
                stats.note("too_long", rec, f"too long: {ex.length} tokens, data.max_length is {cfg.max_length}")
                continue
            kept_recs.append(rec)
            kept.append(ex)
        splits[split], examples[split] = kept_recs, kept
    if problems:  # after cleaning, so the error also names every record cleaning would drop
        raise DataError(problems, stats.dropped_lines())
    return PreparedData(splits, examples, stats, data_digest(cfg.path), context_length)
