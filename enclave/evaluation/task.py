"""A test split scored: greedy answers against the references, overall and per group, and the
perplexity of the reference answers; fairness gaps past a threshold become warnings."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from enclave.evaluation.lm import LanguageModel
from enclave.evaluation.metrics import by_group, fairness_gaps, score
from enclave.evaluation.perplexity import answer_perplexity

log = logging.getLogger("enclave.evaluation")


@dataclass(frozen=True)
class TaskItem:
    """One test example: the prompt as the model sees it, the reference answer as ids and text, its group."""

    prompt_ids: list[int]
    answer_ids: list[int]
    reference: str
    group: str | None = None


@dataclass
class EvalResult:
    """Scores of one model on one test split."""

    label: str
    metrics: dict[str, float]
    per_group: dict[str, dict[str, float]] = field(default_factory=dict)
    gaps: dict[str, dict] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    examples: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict:
        """The scores for a JSON report: metrics, per group, fairness gaps, warnings and example count."""
        return {
            "metrics": self.metrics,
            "per_group": self.per_group,
            "fairness_gaps": self.gaps,
            "warnings": self.warnings,
            "examples": self.examples,
        }


def evaluate(
    lm: LanguageModel,
    decode: Callable[[list[int]], str],
    items: Sequence[TaskItem],
    label: str,
    max_new_tokens: int,
    eos_ids: set[int],
    gap_threshold: float = 10.0,
    progress: Callable[[int], None] | None = None,
    batch_size: int = 16,
) -> EvalResult:
    """Score a model on a test split.

    Args:
        lm: the model (any engine).
        decode: token ids to text (special tokens skipped).
        items: the test examples.
        label: the model's name in reports.
        max_new_tokens: most tokens per answer.
        eos_ids: the tokens that end an answer.
        gap_threshold: a metric that differs by more points than this between groups is a warning.
        progress: called with the number of examples done after each batch.
        batch_size: prompts decoded together.

    Returns:
        The overall metrics (answer perplexity included), per group, the gaps and warnings.
    """
    started = time.perf_counter()
    predictions: list[str] = []
    for i in range(0, len(items), batch_size):
        chunk = items[i : i + batch_size]
        predictions += [
            decode(ids).strip() for ids in lm.greedy([it.prompt_ids for it in chunk], max_new_tokens, eos_ids)
        ]
        if progress:
            progress(len(chunk))
    references = [it.reference for it in items]
    metrics = {
        "perplexity": answer_perplexity(lm, [(it.prompt_ids, it.answer_ids) for it in items]),
        **score(predictions, references),
    }
    per_group = by_group(predictions, references, [it.group for it in items])
    gaps = fairness_gaps(per_group)
    warnings = [
        f"{label}: {metric} differs by {g['gap']:.1f} points between groups ({g['highest']} > {g['lowest']}), "
        f"above the {gap_threshold:g}-point threshold"
        for metric, g in gaps.items()
        if metric != "perplexity" and g["gap"] > gap_threshold
    ]
    for w in warnings:
        log.warning("fairness: %s", w)
    return EvalResult(label, metrics, per_group, gaps, warnings, len(items), time.perf_counter() - started)
