"""Evaluate a model (base, adapter, or any later artifact) on a test split, on equal footing."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field

import torch

from tune.data.records import Record
from tune.data.tokenize import Example, prompt_ids
from tune.eval.metrics import by_group, fairness_gaps, score

log = logging.getLogger(__name__)


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
        return {"metrics": self.metrics, "per_group": self.per_group, "fairness_gaps": self.gaps,
                "warnings": self.warnings, "examples": self.examples}  # fmt: skip


@torch.no_grad()
def answer_perplexity(model, examples: list[Example], pad_id: int, batch_size: int = 16) -> float:
    """exp(mean negative log-likelihood of the reference answer tokens given the prompt)."""
    from tune.train.batching import answer_token_count, collate
    from tune.train.loop import token_loss_sum

    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(examples), batch_size):
        chunk = examples[i : i + batch_size]
        total += token_loss_sum(model, collate(chunk, pad_id)).item()
        count += answer_token_count(chunk)
    return math.exp(total / max(count, 1))


@torch.no_grad()
def text_perplexity(model, tokenizer, text: str, window: int = 512) -> float:
    """Perplexity of raw held-out text in non-overlapping windows (compress compares on this)."""
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"][0]
    total, count = 0.0, 0
    model.eval()
    for i in range(0, len(ids) - 1, window):
        chunk = ids[i : i + window + 1].unsqueeze(0)
        if chunk.size(1) < 2:
            break
        logits = model(input_ids=chunk[:, :-1]).logits
        total += torch.nn.functional.cross_entropy(logits[0], chunk[0, 1:], reduction="sum").item()
        count += chunk.size(1) - 1
    return math.exp(total / max(count, 1))


@torch.no_grad()
def generate_answers(model, tokenizer, records: list[Record], system: str | None, max_new_tokens: int, batch_size: int, progress=None) -> list[str]:
    """Greedy answers for each record's prompt, batched with left padding."""
    model.eval()
    eos = tokenizer.eos_token_id
    answers = []
    for i in range(0, len(records), batch_size):
        prompts = [prompt_ids(tokenizer, r.messages[:-1], system) for r in records[i : i + batch_size]]
        width = max(map(len, prompts))
        ids = torch.full((len(prompts), width), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for j, p in enumerate(prompts):
            ids[j, width - len(p) :] = torch.tensor(p)
            mask[j, width - len(p) :] = 1
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                             eos_token_id=eos, pad_token_id=tokenizer.pad_token_id)  # fmt: skip
        answers += [tokenizer.decode(row[width:], skip_special_tokens=True).strip() for row in out]
        if progress:
            progress(len(prompts))
    return answers


def evaluate(model, tokenizer, records: list[Record], examples: list[Example], label: str, system: str | None,
             max_new_tokens: int, batch_size: int, gap_threshold: float, progress=None) -> EvalResult:  # fmt: skip
    """Perplexity on the reference answers plus answer metrics, overall and per group."""
    started = time.perf_counter()
    predictions = generate_answers(model, tokenizer, records, system, max_new_tokens, batch_size, progress)
    references = [r.answer for r in records]
    metrics = {"perplexity": answer_perplexity(model, examples, tokenizer.pad_token_id), **score(predictions, references)}
    per_group = by_group(predictions, references, [r.group for r in records])
    gaps = fairness_gaps(per_group)
    warnings = [
        f"{label}: {metric} differs by {g['gap']:.1f} points between groups ({g['highest']} > {g['lowest']}), above the {gap_threshold:g}-point threshold"
        for metric, g in gaps.items() if metric != "perplexity" and g["gap"] > gap_threshold
    ]  # fmt: skip
    for w in warnings:
        log.warning("fairness: %s", w)
    return EvalResult(label, metrics, per_group, gaps, warnings, len(records), time.perf_counter() - started)
