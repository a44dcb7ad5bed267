"""Continual tuning: start from an earlier adapter, replay part of its training data, and measure
what the new data gains against what the old task loses.

``init_adapter`` names the adapter to continue (verified, and made for this base); its LoRA
settings are kept and its weights train on. Its own data set is prepared again with its own data
settings (from its manifest), so the splits are the ones it was trained and tested on: a
``rehearsal.share`` of its training split joins the new training data, and its test split is
the frozen set. A frozen record whose question is nearly that of a new training record is left
out of it (and counted): training on a question and scoring it as unseen would hide forgetting.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from pathlib import Path

from enclave.errors import EnclaveError
from enclave.manifest import Manifest, require_valid
from enclave.store import resolve_adapter
from tune.config import TuneConfig
from tune.data.clean import jaccard, shingles
from tune.data.prepare import PreparedData, prepare

log = logging.getLogger(__name__)


@dataclass
class Previous:
    """The adapter a continual run starts from, and what it was trained and tested on."""

    path: Path
    manifest: Manifest
    config: TuneConfig
    frozen_records: list = field(default_factory=list)  # its test split, less what the new data trains on
    frozen_examples: list = field(default_factory=list)
    left_out: int = 0  # frozen records left out: their questions are new training data
    replayed: int = 0


def previous(cfg: TuneConfig, base_digest: str | None) -> Previous | None:
    """The verified ``init_adapter`` and its training config (None without one).

    Raises:
        EnclaveError: not an adapter, fails verification, made for another base, or made without a
            config in its manifest.
    """
    if cfg.init_adapter is None:
        return None
    path = resolve_adapter(cfg.init_adapter)
    try:
        manifest = require_valid(path)
    except EnclaveError as exc:
        raise EnclaveError(f"init_adapter: {exc.message}", fix=exc.fix) from None
    if manifest.kind != "adapter":
        raise EnclaveError(
            f"init_adapter: {path} is a {manifest.kind} artifact", fix="name an adapter made by `enclave tune`"
        )
    made_for = manifest.settings.get("base_model", {}).get("digest")
    if made_for and base_digest and made_for != base_digest:
        raise EnclaveError(
            f"init_adapter: {path} was trained on base {made_for}, and base_model {cfg.base_model} is {base_digest}",
            fix="set base_model to the base it was trained on (its manifest.json, settings.base_model)",
        )
    try:
        config = TuneConfig.model_validate(manifest.settings["config"])
    except (KeyError, ValueError):
        raise EnclaveError(
            f"init_adapter: {path}'s manifest has no tuning config to take its data splits from",
            fix="continue from an adapter made by `enclave tune` of this release",
        ) from None
    return Previous(path, manifest, config)


def add_rehearsal(cfg: TuneConfig, prev: Previous, data: PreparedData, tokenizer, context) -> None:
    """Replay a share of the earlier training split into ``data`` and set the frozen test split."""
    old_data = prev.config.data
    if cfg.rehearsal.data is not None:
        old_data = old_data.model_copy(update={"path": cfg.rehearsal.data})
    old = prepare(old_data, tokenizer, context)
    recorded = prev.manifest.settings.get("data_digest")
    if recorded and recorded != old.digest:
        log.warning(
            "the earlier data (%s) is not the data %s was trained on (digest %s, now %s): its splits may differ",
            old_data.path,
            prev.path.name,
            recorded,
            old.digest,
        )
    n = round(cfg.rehearsal.share * len(old.examples["train"]))
    picked = sorted(random.Random(cfg.train.seed).sample(range(len(old.examples["train"])), n))
    data.records["train"] += [old.records["train"][i] for i in picked]
    data.examples["train"] += [old.examples["train"][i] for i in picked]
    prev.replayed = n
    new_questions = [shingles(r.prompt_text) for r in data.records["train"][: len(data.records["train"]) - n]]
    threshold = cfg.data.near_duplicate_threshold
    for record, example in zip(old.records["test"], old.examples["test"]):
        grams = shingles(record.prompt_text)
        if any(jaccard(grams, q) >= threshold for q in new_questions):
            prev.left_out += 1
            continue
        prev.frozen_records.append(record)
        prev.frozen_examples.append(example)
    log.info(
        "rehearsal: %d of %d earlier training examples replayed; frozen test split %d records (%d left out: "
        "their questions are new training data)",
        n,
        len(old.examples["train"]),
        len(prev.frozen_records),
        prev.left_out,
    )


@dataclass
class Continual:
    """A continual run's scores before (the earlier adapter) and after, on the new and the frozen split."""

    prev: Previous
    before: dict  # "new" / "frozen" -> EvalResult of the earlier adapter
    after: dict  # the same for the new one

    def change(self, split: str, metric: str = "exact_match") -> tuple[float, float] | None:
        if split not in self.before or split not in self.after:
            return None
        return self.before[split].metrics.get(metric, 0.0), self.after[split].metrics.get(metric, 0.0)

    def to_dict(self) -> dict:
        out = {
            "init_adapter": {"name": self.prev.manifest.name, "digest": self.prev.manifest.digest},
            "replayed": self.prev.replayed,
            "frozen_records": len(self.prev.frozen_records),
            "frozen_left_out": self.prev.left_out,
        }
        for split in ("new", "frozen"):
            if split in self.after:
                before, after = self.change(split)
                out[split] = {
                    "previous": self.before[split].to_dict(),
                    "adapter": self.after[split].to_dict(),
                    "exact_match_change": after - before,
                }
        return out

    def rows(self) -> list[tuple[str, str]]:
        """Summary-table rows: the gain on the new split beside the forgetting on the frozen one."""
        rows = [("continued from", f"{self.prev.path} ({self.prev.replayed} of its examples replayed)")]
        for split, what in (("new", "gain on the new test split"), ("frozen", "change on its frozen test split")):
            pair = self.change(split)
            if pair is not None:
                before, after = pair
                n = len(self.prev.frozen_records) if split == "frozen" else self.after[split].examples
                rows.append((what, f"exact match {before:.1f} -> {after:.1f} ({after - before:+.1f}; {n} records)"))
        return rows
