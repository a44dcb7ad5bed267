"""`enclave tune gate NEW --against ACTIVE`: may a candidate adapter replace the active one?

Both adapters are scored, on one base, on the frozen evaluation sets: each adapter's own test
split (prepared with the data settings in its manifest, so the splits are the ones it was tested
on) and any ``--data`` sets (the corrected questions, say). A record whose question is nearly one
the candidate trained on is left out of every set (and counted), so a set measures what the
candidate learned rather than what it memorised. The candidate passes when, on every set, its
exact match is at most ``max_drop`` points below the active adapter's and its largest gap between
groups has not widened by more than ``max_gap_widening`` points. The table says which check
failed; the verdict goes into the candidate's manifest (``metrics.gate``).
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field
from pathlib import Path

from enclave.errors import EnclaveError
from enclave.manifest import require_valid, update_metrics
from enclave.store import resolve_adapter
from tune.config import TuneConfig
from tune.data.clean import jaccard, shingles
from tune.data.prepare import prepare

log = logging.getLogger(__name__)
METRIC = "exact_match"


@dataclass
class SetResult:
    """One evaluation set: both adapters' scores and the checks."""

    name: str
    records: int
    left_out: int
    active: dict
    candidate: dict
    checks: list[tuple[str, bool, str]] = field(default_factory=list)  # (check, passed, detail)

    @property
    def passed(self) -> bool:
        return all(ok for _, ok, _ in self.checks)


@dataclass
class Verdict:
    candidate: Path
    active: Path
    sets: list[SetResult]
    max_drop: float
    max_gap_widening: float

    @property
    def passed(self) -> bool:
        return bool(self.sets) and all(s.passed for s in self.sets)

    def to_dict(self, active_digest: str) -> dict:
        return {
            "verdict": "pass" if self.passed else "fail",
            "against": {"name": self.active.name, "digest": active_digest},
            "max_drop": self.max_drop,
            "max_gap_widening": self.max_gap_widening,
            "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "sets": [
                {
                    "name": s.name,
                    "records": s.records,
                    "left_out": s.left_out,
                    "active": s.active,
                    "candidate": s.candidate,
                    "checks": [{"check": c, "passed": ok, "detail": d} for c, ok, d in s.checks],
                }
                for s in self.sets
            ],
        }


def _adapter(ref: str, role: str):
    path = resolve_adapter(ref)
    try:
        manifest = require_valid(path)
    except EnclaveError as exc:
        raise EnclaveError(f"{role}: {exc.message}", fix=exc.fix) from None
    if manifest.kind != "adapter" or "config" not in manifest.settings:
        raise EnclaveError(f"{role}: {path} is not an adapter made by `enclave tune`", fix="name an adapter artifact")
    return path, manifest, TuneConfig.model_validate(manifest.settings["config"])


def _gap(result) -> float | None:
    gap = result.gaps.get(METRIC)
    return None if gap is None else gap["gap"]


def gate(
    candidate: str,
    active: str,
    data: list[str] = (),
    max_drop: float = 2.0,
    max_gap_widening: float = 5.0,
    max_examples: int | None = None,
    record: bool = True,
) -> Verdict:
    """Score both adapters on the frozen sets and judge the candidate (see the module docstring).

    Raises:
        EnclaveError: either is not a verified adapter, or they were made for different bases.
    """
    from enclave.hf.loader import with_adapter
    from tune.eval.run import score
    from tune.train.model import load_base

    cand_path, cand_manifest, cand_cfg = _adapter(candidate, "candidate")
    act_path, act_manifest, act_cfg = _adapter(active, "--against")
    bases = {m.settings.get("base_model", {}).get("digest") for m in (cand_manifest, act_manifest)}
    if len(bases) > 1:
        raise EnclaveError(
            f"{cand_path.name} and {act_path.name} were tuned on different bases", fix="compare adapters of one base"
        )
    resolved, model, tokenizer = load_base(cand_cfg.base_model)
    context = getattr(model.config, "max_position_embeddings", None)
    model = with_adapter(model, resolved, act_path)  # PEFT names it "default"
    model.load_adapter(str(cand_path), adapter_name="candidate")
    trained = [shingles(r.prompt_text) for r in prepare(cand_cfg.data, tokenizer, context).records["train"]]
    scoring = cand_cfg.model_copy(update={"eval": cand_cfg.eval.model_copy(update={"max_examples": None})})
    sets = []
    seen = set()
    # (name, data settings, whole): an adapter's own test split, or a --data set used whole
    named = [(f"{p.name} test split", c.data, False) for p, c in ((act_path, act_cfg), (cand_path, cand_cfg))]
    named += [(d, cand_cfg.data.model_copy(update={"path": d}), True) for d in data]
    for name, settings, whole in named:
        prepared = prepare(settings, tokenizer, context)
        if (prepared.digest, whole) in seen:
            continue
        seen.add((prepared.digest, whole))
        splits = ("train", "validation", "test") if whole else ("test",)
        pairs = [(r, e) for s in splits for r, e in zip(prepared.records[s], prepared.examples[s])]
        if not pairs:  # e.g. a candidate trained on all of its data (split_ratios [1, 0, 0]): nothing to score
            log.info("gate: %s is empty", name)
            continue
        records, examples, left_out = [], [], 0
        for rec, ex in pairs:
            grams = shingles(rec.prompt_text)
            if not whole and any(jaccard(grams, t) >= settings.near_duplicate_threshold for t in trained):
                left_out += 1
                continue
            records.append(rec)
            examples.append(ex)
        if max_examples:
            records, examples = records[:max_examples], examples[:max_examples]
        if not records:
            log.warning("gate: %s has no records left to score: all %d are training data", name, left_out)
            continue
        scores = {}
        for label, adapter in (("active", "default"), ("candidate", "candidate")):
            model.set_adapter(adapter)
            scores[label] = score(scoring, model, tokenizer, records, examples, label, f"gate {label}")
        sets.append(_judge(name, len(records), left_out, scores, max_drop, max_gap_widening))
    verdict = Verdict(cand_path, act_path, sets, max_drop, max_gap_widening)
    if record:
        update_metrics(cand_path, {"gate": verdict.to_dict(act_manifest.digest)})
    return verdict


def _judge(name, n, left_out, scores, max_drop, max_gap_widening) -> SetResult:
    act, cand = scores["active"], scores["candidate"]
    a, c = act.metrics.get(METRIC, 0.0), cand.metrics.get(METRIC, 0.0)
    result = SetResult(name, n, left_out, act.to_dict(), cand.to_dict())
    result.checks.append(
        ("exact match", c >= a - max_drop, f"{a:.1f} -> {c:.1f} ({c - a:+.1f}; at most -{max_drop:g} allowed)")
    )
    ga, gc = _gap(act), _gap(cand)
    if ga is not None and gc is not None:
        result.checks.append(
            (
                "gap between groups",
                gc <= ga + max_gap_widening,
                f"{ga:.1f} -> {gc:.1f} ({gc - ga:+.1f}; at most +{max_gap_widening:g} allowed)",
            )
        )
    return result


def print_verdict(verdict: Verdict) -> None:
    from rich.table import Table

    from enclave.ui import console

    t = Table(title=f"Gate: {verdict.candidate.name} against {verdict.active.name}")
    for column in ("set", "records", "check", "active -> candidate", "result"):
        t.add_column(column)
    for s in verdict.sets:
        records = f"{s.records}" + (f" ({s.left_out} left out: trained on)" if s.left_out else "")
        for i, (check, ok, detail) in enumerate(s.checks):
            t.add_row(s.name if i == 0 else "", records if i == 0 else "", check, detail, "pass" if ok else "FAIL")
    con = console()
    con.print(t)
    con.print(f"verdict: {'PASS' if verdict.passed else 'FAIL'} (recorded in {verdict.candidate}/manifest.json)")
