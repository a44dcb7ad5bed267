"""Evaluate a model (base, adapter, or any later artifact) on a test split, on equal footing.

The scoring itself is the shared evaluation (``enclave.evaluation``), which `enclave compress
report` and the benchmark use too; this module turns tune's records and examples into its items.
"""

from __future__ import annotations

from enclave.evaluation.lm import LanguageModel, TorchLM
from enclave.evaluation.perplexity import text_perplexity as _text_perplexity
from enclave.evaluation.task import EvalResult, TaskItem
from enclave.evaluation.task import evaluate as evaluate_items
from tune.data.records import Record
from tune.data.tokenize import IGNORE, Example, prompt_ids

__all__ = ["EvalResult", "as_lm", "evaluate", "items", "score", "text_perplexity"]


def as_lm(model, tokenizer, batch_size: int = 16) -> LanguageModel:
    """The evaluation interface for a transformers model (an ONNX or vLLM model already is one)."""
    return model if hasattr(model, "token_logprobs") else TorchLM(model, tokenizer.pad_token_id, batch_size)


def items(tokenizer, records: list[Record], examples: list[Example], system: str | None) -> list[TaskItem]:
    """Test items: the prompt and answer tokens of each example (as training encodes them), its reference and group."""
    out = []
    for record, example in zip(records, examples):
        start = next((i for i, label in enumerate(example.labels) if label != IGNORE), len(example.labels))
        prompt = example.input_ids[:start] if start else prompt_ids(tokenizer, record.messages[:-1], system)
        out.append(TaskItem(prompt, example.input_ids[start:], record.answer, record.group))
    return out


def evaluate(
    model,
    tokenizer,
    records: list[Record],
    examples: list[Example],
    label: str,
    system: str | None,
    max_new_tokens: int,
    batch_size: int,
    gap_threshold: float,
    progress=None,
) -> EvalResult:
    """Perplexity on the reference answers plus answer metrics, overall and per group."""
    lm = as_lm(model, tokenizer, batch_size)
    return evaluate_items(
        lm,
        lambda ids: tokenizer.decode(ids, skip_special_tokens=True),
        items(tokenizer, records, examples, system),
        label,
        max_new_tokens,
        {tokenizer.eos_token_id},
        gap_threshold,
        progress,
        batch_size,
    )


def score(cfg, model, tokenizer, records: list[Record], examples: list[Example], label: str, desc: str) -> EvalResult:
    """``evaluate`` with a recipe's settings (``cfg``: a TuneConfig), at most ``cfg.eval.max_examples``
    of the records, under a progress bar named ``desc``."""
    from tqdm import tqdm

    if cfg.eval.max_examples:
        records, examples = records[: cfg.eval.max_examples], examples[: cfg.eval.max_examples]
    with tqdm(total=len(records), desc=desc, unit="ex") as bar:
        return evaluate(
            model,
            tokenizer,
            records,
            examples,
            label,
            cfg.data.system_prompt,
            cfg.eval.max_new_tokens,
            cfg.eval.batch_size,
            cfg.eval.fairness_gap_threshold,
            bar.update,
        )


def text_perplexity(model, tokenizer, text: str, window: int = 512, max_tokens: int | None = None) -> float:
    """Perplexity of raw held-out text in non-overlapping windows (the shared definition)."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return _text_perplexity(as_lm(model, tokenizer), ids, window, max_tokens)
