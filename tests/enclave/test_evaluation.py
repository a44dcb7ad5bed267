"""The shared evaluation: one perplexity definition that agrees with an independent computation and
with the training loss, and the same scores from the torch and onnxruntime engines."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from enclave.evaluation.lm import TorchLM
from enclave.evaluation.perplexity import answer_perplexity, text_perplexity, windows
from enclave.hf.loader import load
from enclave.store import resolve_model

TEXT = "The court granted the motion to dismiss for lack of jurisdiction. The patient was given twice a day. " * 6


@pytest.fixture(scope="module")
def tiny(tiny_checkpoint):
    model, tokenizer = load(resolve_model(str(tiny_checkpoint), verify=False))
    return model.eval(), tokenizer


def test_windows_cover_every_token_once():
    assert windows(list(range(10)), 4) == [[0, 1, 2, 3, 4], [4, 5, 6, 7, 8], [8, 9]]
    assert windows(list(range(10)), 4, max_tokens=5) == [[0, 1, 2, 3, 4], [4, 5]]
    assert windows([1], 4) == []


def test_text_perplexity_is_exp_mean_nll(tiny):
    model, tokenizer = tiny
    ids = tokenizer(TEXT, add_special_tokens=False)["input_ids"][:101]
    total, count = 0.0, 0
    with torch.no_grad():  # an independent computation: cross entropy over each window
        for start in range(0, 100, 50):
            chunk = torch.tensor([ids[start : start + 51]])
            logits = model(input_ids=chunk[:, :-1]).logits[0]
            total += torch.nn.functional.cross_entropy(logits, chunk[0, 1:], reduction="sum").item()
            count += chunk.size(1) - 1
    assert text_perplexity(TorchLM(model), ids, window=50) == pytest.approx(math.exp(total / count), rel=1e-5)
    assert math.isnan(text_perplexity(TorchLM(model), ids[:1]))


def test_answer_perplexity_equals_the_training_loss_on_answer_tokens(tiny, facts_file):
    from enclave.config import load_config
    from tune.config import TuneConfig
    from tune.data.prepare import prepare
    from tune.eval.run import items
    from tune.train.batching import answer_token_count, collate
    from tune.train.loop import token_loss_sum

    model, tokenizer = tiny
    cfg = load_config(TuneConfig, None, [f"data.path={facts_file}", "data.max_length=64"])
    data = prepare(cfg.data, tokenizer, 128)
    examples = data.examples["test"]
    with torch.no_grad():
        loss = token_loss_sum(model, collate(examples, tokenizer.pad_token_id)).item() / answer_token_count(examples)
    pairs = [(it.prompt_ids, it.answer_ids) for it in items(tokenizer, data.records["test"], examples, None)]
    assert answer_perplexity(TorchLM(model), pairs) == pytest.approx(math.exp(loss), rel=1e-4)


def test_torch_and_onnxruntime_score_alike(tiny_wide_checkpoint, tmp_path):
    pytest.importorskip("onnxruntime_genai")
    from compress import registry
    from compress.export.config import ExportSettings
    from enclave.evaluation.lm import OnnxLM

    model, tokenizer = load(resolve_model(str(tiny_wide_checkpoint), verify=False))  # GQA kernels want head sizes of 16
    onnx = registry.get("export").run(
        str(tiny_wide_checkpoint), ExportSettings(precision="fp32", check_tokens=4), tmp_path / "onnx", "o"
    )
    torch_lm, onnx_lm = TorchLM(model, tokenizer.pad_token_id), OnnxLM(onnx)
    ids = tokenizer(TEXT, add_special_tokens=False)["input_ids"][:60]
    assert np.abs(torch_lm.token_logprobs(ids) - onnx_lm.token_logprobs(ids)).max() < 1e-4
    prompts = [ids[:7], ids[10:30]]
    eos = {tokenizer.eos_token_id}
    assert torch_lm.greedy(prompts, 8, eos) == onnx_lm.greedy(prompts, 8, eos)


def test_forgetting_warns_past_the_threshold_only():
    from enclave.evaluation.compare import Forgetting

    assert (
        Forgetting("builtin:heldout_apache2", 17.9, 37.7, 1.25)
        .warning("adapter")
        .startswith(
            "adapter: general-text perplexity (builtin:heldout_apache2) went from 17.9 to 37.7 "
            "(2.11x, above the 1.25x threshold)"
        )
    )
    assert Forgetting("t", 17.9, 22.3, 1.25).warning("adapter") is None  # 1.246x
    assert Forgetting("t", 17.9, 12.0, 1.25).to_dict()["ratio"] == pytest.approx(12.0 / 17.9)


def test_gain_kept_is_the_share_of_tuning_gain():
    from enclave.evaluation.compare import gain_kept

    assert gain_kept(10.0, 90.0, 86.0) == pytest.approx(0.95)
    assert gain_kept(10.0, 90.0, 10.0) == 0.0 and gain_kept(10.0, 90.0, 95.0) == pytest.approx(85 / 80)
    assert gain_kept(50.0, 40.0, 45.0) is None  # tuning gained nothing: nothing to keep
    assert gain_kept(None, 90.0, 80.0) is None and gain_kept(10.0, 90.0, float("nan")) is None


def test_batched_log_probabilities_equal_one_sequence_at_a_time(tiny):
    """TorchLM batches sequences of different lengths with right padding: each row's figures are
    the ones it gets alone (the padding after a row never reaches its tokens)."""
    model, tokenizer = tiny
    ids = tokenizer(TEXT, add_special_tokens=False)["input_ids"]
    seqs = [ids[:7], ids[3:40], ids[:2], ids[10:25], ids[5:6]]
    lm = TorchLM(model, tokenizer.pad_token_id)
    for many, one in zip(lm.token_logprobs_many(seqs, max_tokens=80), map(lm.token_logprobs, seqs)):
        assert many.shape == one.shape and (one.size == 0 or np.abs(many - one).max() < 1e-5)
