"""The onnxruntime backend rewrites the exported graph so the output layer runs only at the
sampled position: same logits as the exported graph's last position, one row of them per row."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest

from enclave import onnx_graph
from serve.backends.ort import Backend


@pytest.fixture(scope="module")
def artifact(serve_repo):
    from enclave.repository import Repository

    return Repository(serve_repo).active("tiny-onnx").path


def exported_logits(root, prompt: list[int]) -> np.ndarray:
    """Every position's logits from the graph as exported (no rewrite)."""
    dec = json.loads((root / "genai_config.json").read_text())["model"]["decoder"]
    session = ort.InferenceSession(str(root / dec["filename"]), providers=["CPUExecutionProvider"])
    feed = {"input_ids": np.array([prompt], np.int64), "attention_mask": np.ones((1, len(prompt)), np.int64)}
    for i in session.get_inputs():
        if i.name.startswith("past_key_values"):
            feed[i.name] = np.zeros((1, dec["num_key_value_heads"], 0, dec["head_size"]), np.float32)
        elif i.name == "position_ids":
            feed[i.name] = np.arange(len(prompt), dtype=np.int64)[None, :]
    return session.run(["logits"], feed)[0][0]  # (T, vocab)


def test_prefill_logits_are_the_exported_graphs_last_position(artifact):
    prompt = [5, 9, 14, 7, 3, 3, 8, 21, 4, 11]
    full = exported_logits(artifact, prompt)
    assert full.shape[0] == len(prompt)  # the exported graph computes every position
    backend = Backend(artifact, threads=1)
    logits, _row = backend.prefill(prompt, None)
    np.testing.assert_allclose(logits, full[-1], rtol=1e-5, atol=1e-5)
    out = {o.name: o for o in backend.session.get_outputs()}
    assert out["logits"].shape[1] == 1  # one position per row, whatever the prompt's length


def test_each_row_reads_its_own_position(artifact):
    graph = onnx_graph.sampled_logits_only(onnx_graph.load_graph(artifact / "model.onnx"))
    session = onnx_graph.session_from_graph(graph, artifact, ort.SessionOptions(), ["CPUExecutionProvider"])
    dec = json.loads((artifact / "genai_config.json").read_text())["model"]["decoder"]
    prompts = [[5, 9, 14, 7, 3], [30, 2, 0, 0, 0]]  # the second is 2 tokens long, right-padded
    lengths = np.array([5, 2])
    feed = {
        "input_ids": np.array(prompts, np.int64),
        "attention_mask": (np.arange(5)[None, :] < lengths[:, None]).astype(np.int64),
        onnx_graph.SAMPLED_INDEX: lengths - 1,
    }
    for i in session.get_inputs():
        if i.name.startswith("past_key_values"):
            feed[i.name] = np.zeros((2, dec["num_key_value_heads"], 0, dec["head_size"]), np.float32)
        elif i.name == "position_ids":
            feed[i.name] = np.tile(np.arange(5, dtype=np.int64), (2, 1))
    logits = session.run(["logits"], feed)[0]
    assert logits.shape[:2] == (2, 1)
    for row, (prompt, n) in enumerate(zip(prompts, lengths)):
        np.testing.assert_allclose(logits[row, 0], exported_logits(artifact, prompt[:n])[-1], rtol=1e-4, atol=1e-4)


def test_a_graph_without_the_logits_output_is_refused(artifact):
    with pytest.raises(ValueError, match="no node of the graph produces 'scores'"):
        onnx_graph.sampled_logits_only(onnx_graph.load_graph(artifact / "model.onnx"), "scores")
