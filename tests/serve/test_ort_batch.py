"""The onnxruntime backend's KV caches (in place on CPU, copied elsewhere): rows joining, leaving
from the middle and growing past the buffer give each row the logits it would get alone."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from serve.backends import ort


@pytest.fixture(scope="module")
def model(serve_repo):
    from enclave.repository import Repository

    path = Repository(serve_repo).active("tiny-onnx").path
    return ort.Backend(path, threads=1)


def alone(model, ids: list[int]) -> np.ndarray:
    return model.prefill(ids, None)[0]


@pytest.mark.parametrize("kind", [ort.OrtBatch, ort.CopyBatch])
def test_rows_join_leave_and_grow_like_single_sequences(model, monkeypatch, kind):
    monkeypatch.setattr(ort.OrtBatch, "initial_capacity", 4)  # forces several regrowths
    monkeypatch.setattr(ort.OrtBatch, "reserve_bytes", 0)
    monkeypatch.setattr(model, "context_length", 64)
    batch = kind(model)
    seqs = []

    def join(prompt):
        logits, row = model.prefill(prompt, None)
        batch.add(row)
        seqs.append([*prompt, int(logits.argmax())])

    for prompt in ([5, 9, 14], [7, 3, 3, 8, 21, 4, 11], [30]):
        join(prompt)
    for step in range(24):
        logits = batch.step([s[-1] for s in seqs])
        for seq, row in zip(seqs, logits):
            np.testing.assert_allclose(row, alone(model, seq), atol=1e-4)
            seq.append(int(row.argmax()))
        if step == 3:  # the middle row finishes: the last one moves up
            batch.keep([0, 2])
            del seqs[1]
        if step == 8:
            join([12, 2, 40, 41, 6])
        if step == 12:  # rows reordered
            batch.keep([2, 0, 1])
            seqs[:] = [seqs[2], seqs[0], seqs[1]]
    assert batch.kv[0].shape[2] >= max(len(s) for s in seqs) - 1 > 16
    batch.keep([])
    assert not batch.kv and len(batch.lengths) == 0
    assert isinstance(model.new_batch(), ort.OrtBatch)  # on the CPU provider


def test_rows_get_the_whole_context_at_once_and_never_regrow(model, monkeypatch):
    """Where the whole context fits ``reserve_bytes``, a row's slot is the context from the start:
    rows growing copy no cache (every stream would wait for the copy)."""
    monkeypatch.setattr(model, "context_length", 64)
    monkeypatch.setattr(ort.OrtBatch, "initial_capacity", 4)  # what it would start from otherwise
    batch = ort.OrtBatch(model)
    seqs = []
    for prompt in ([5, 9, 14], [7, 3]):
        logits, row = model.prefill(prompt, None)
        batch.add(row)
        seqs.append([*prompt, int(logits.argmax())])
    buffers = list(batch.kv)
    assert buffers[0].shape[0] == 2 and buffers[0].shape[2] == 64
    for _ in range(40):
        logits = batch.step([s[-1] for s in seqs])
        for seq, row in zip(seqs, logits):
            seq.append(int(row.argmax()))
    assert all(a is b for a, b in zip(batch.kv, buffers))
    np.testing.assert_allclose(batch.step([s[-1] for s in seqs])[1], alone(model, seqs[1]), atol=1e-4)


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="reads resident memory from /proc")
def test_reserved_buffers_take_memory_only_where_written():
    def resident_mb() -> float:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    before = resident_mb()
    buf = ort._reserved_zeros((16, 4, 8192, 64), np.float32)  # 128 MiB of address space
    buf[:, :, :10] = 1.0  # 10 tokens in each row's slot
    assert resident_mb() - before < 16
    assert buf[3, 2, 9, 5] == 1.0 and buf[3, 2, 10, 5] == 0.0
