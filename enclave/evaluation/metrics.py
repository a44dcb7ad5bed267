"""Answer-quality metrics (pure functions; no model here): the one definition of each.

Exact match and token F1 follow the SQuAD evaluation script's normalisation (lower case,
no punctuation, no articles, single spaces). BLEU is sacrebleu's corpus BLEU; ROUGE-L is
Google's rouge-score F-measure with stemming.
"""

from __future__ import annotations

import re
import string
from collections import Counter

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD's answer normalisation: lower case, no punctuation, no articles (a, an, the), single spaces."""
    return " ".join(_ARTICLES.sub(" ", text.lower().translate(_PUNCT)).split())


def exact_match(prediction: str, reference: str) -> float:
    """1.0 when the prediction equals the reference after ``normalize_answer``, else 0.0."""
    return float(normalize_answer(prediction) == normalize_answer(reference))


def token_f1(prediction: str, reference: str) -> float:
    """SQuAD's token F1: how far the words of the two normalised answers overlap.

    Args:
        prediction: the model's answer.
        reference: the expected answer.

    Returns:
        The harmonic mean of precision and recall over shared words, 0.0 to 1.0. When either answer
        is empty after normalisation, 1.0 if both are, else 0.0.
    """
    pred, ref = normalize_answer(prediction).split(), normalize_answer(reference).split()
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def bleu(predictions: list[str], references: list[str]) -> float:
    """Corpus BLEU (sacrebleu's defaults) of the predictions against one reference each, 0-100."""
    import sacrebleu

    return float(sacrebleu.corpus_bleu(predictions, [references]).score)


def rouge_l(predictions: list[str], references: list[str]) -> float:
    """Mean ROUGE-L F-measure (with stemming) over prediction/reference pairs, 0-100; 0.0 for no pairs."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    scores = [scorer.score(r, p)["rougeL"].fmeasure for p, r in zip(predictions, references)]
    return 100.0 * sum(scores) / max(len(scores), 1)


def is_label_task(references: list[str], max_labels: int = 20) -> bool:
    """Answers are labels when there are few distinct ones, each short and repeated."""
    labels = Counter(normalize_answer(r) for r in references)
    return (
        1 < len(labels) <= max_labels
        and len(references) >= 2 * len(labels)
        and all(len(k.split()) <= 3 for k in labels)
    )


def macro_f1(predictions: list[str], references: list[str]) -> float:
    """Mean per-label F1, labels taken from the references."""
    preds, refs = [normalize_answer(p) for p in predictions], [normalize_answer(r) for r in references]
    scores = []
    for label in sorted(set(refs)):
        tp = sum(p == label and r == label for p, r in zip(preds, refs))
        fp = sum(p == label and r != label for p, r in zip(preds, refs))
        fn = sum(p != label and r == label for p, r in zip(preds, refs))
        scores.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return 100.0 * sum(scores) / max(len(scores), 1)


def score(predictions: list[str], references: list[str]) -> dict[str, float]:
    """Every answer metric for one set of predictions (percentages, 0-100)."""
    n = max(len(references), 1)
    out = {
        "exact_match": 100.0 * sum(map(exact_match, predictions, references)) / n,
        "token_f1": 100.0 * sum(map(token_f1, predictions, references)) / n,
        "bleu": bleu(predictions, references),
        "rouge_l": rouge_l(predictions, references),
    }
    if is_label_task(references):
        out["accuracy"] = out["exact_match"]
        out["macro_f1"] = macro_f1(predictions, references)
    return out


def by_group(predictions: list[str], references: list[str], groups: list[str | None]) -> dict[str, dict[str, float]]:
    """``score`` per group (records without a group are left out)."""
    names = sorted({g for g in groups if g})
    return {
        g: score(
            [p for p, gg in zip(predictions, groups) if gg == g], [r for r, gg in zip(references, groups) if gg == g]
        )
        for g in names
    }


def fairness_gaps(per_group: dict[str, dict[str, float]]) -> dict[str, dict]:
    """For each metric, the largest difference between groups and which groups it lies between."""
    if len(per_group) < 2:
        return {}
    gaps = {}
    for metric in next(iter(per_group.values())):
        values = {g: m[metric] for g, m in per_group.items() if metric in m}
        lo, hi = min(values, key=values.get), max(values, key=values.get)
        gaps[metric] = {"gap": values[hi] - values[lo], "highest": hi, "lowest": lo}
    return gaps
