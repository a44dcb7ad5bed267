import pytest

from enclave.evaluation.metrics import (
    bleu,
    by_group,
    exact_match,
    fairness_gaps,
    is_label_task,
    macro_f1,
    score,
    token_f1,
)


def test_exact_match_and_token_f1_squad_normalisation():
    assert exact_match("Twice a day.", "twice a day") == 1.0
    assert exact_match("The answer: twice", "twice") == 0.0
    assert token_f1("twice a day by mouth", "twice a day") == pytest.approx(2 * (2 / 4) * 1.0 / (2 / 4 + 1.0))
    assert token_f1("", "") == 1.0 and token_f1("x", "") == 0.0


def test_bleu_and_rouge_on_known_values():
    s = score(["twice a day", "by mouth"], ["twice a day", "by the mouth"])
    assert s["exact_match"] == 100.0 and s["token_f1"] == 100.0  # articles are ignored
    assert s["rouge_l"] == pytest.approx(100 * (1.0 + 0.8) / 2)
    pred, ref = (
        "the patient takes two tablets by mouth twice a day",
        "the patient takes two tablets by mouth three times a day",
    )
    assert bleu([pred], [ref]) == pytest.approx(63.98, abs=0.01)  # sacrebleu's corpus BLEU
    assert bleu([ref], [ref]) == pytest.approx(100.0)
    assert "accuracy" not in s


def test_label_tasks_get_accuracy_and_macro_f1():
    refs = ["yes", "no", "yes", "no", "yes", "no"]
    preds = ["yes", "yes", "yes", "no", "no", "no"]
    assert is_label_task(refs)
    s = score(preds, refs)
    assert s["accuracy"] == pytest.approx(100 * 4 / 6)
    assert s["macro_f1"] == pytest.approx(macro_f1(preds, refs)) == pytest.approx(100 * 2 / 3)


def test_fairness_gap_per_metric():
    groups = ["a", "a", "b", "b", None]
    per = by_group(["x", "y", "x", "z", "q"], ["x", "y", "w", "z", "q"], groups)
    assert per["a"]["exact_match"] == 100.0 and per["b"]["exact_match"] == 50.0
    gaps = fairness_gaps(per)
    assert gaps["exact_match"] == {"gap": 50.0, "highest": "a", "lowest": "b"}
