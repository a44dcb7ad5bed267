"""Continual tuning on the tiny model: start from an adapter, replay part of its data, and score the
new adapter on the new test split and the earlier adapter's frozen test split."""

from __future__ import annotations

import pytest
from safetensors.torch import load_file

from enclave.config import load_config
from enclave.errors import EnclaveError
from enclave.manifest import read_manifest
from tests.conftest import fact_rows, write_jsonl
from tests.tune.conftest import tiny_overrides
from tune.config import TuneConfig
from tune.run import run


def _config(checkpoint, data, **extra) -> TuneConfig:
    return load_config(TuneConfig, None, tiny_overrides(checkpoint, data, **extra))


def test_continue_from_an_adapter_with_rehearsal(enclave_home, tiny_checkpoint, facts_file, tmp_path):
    first = run(_config(tiny_checkpoint, facts_file, name="first", **{"lora.r": 8}))
    old_test = [r for r in fact_rows() if r["split"] == "test"]
    corrections = [
        {"instruction": "What is a tort?", "output": "A civil wrong.", "split": "train"},
        {"instruction": "What does NPO mean?", "output": "Nothing by mouth.", "split": "train"},
        {"instruction": old_test[0]["instruction"], "output": old_test[0]["output"], "split": "train"},
        {"instruction": "Explain what PRN means.", "output": "As needed.", "split": "test"},
    ]
    new_data = write_jsonl(tmp_path / "corrections.jsonl", corrections)
    cfg = _config(
        tiny_checkpoint,
        new_data,
        name="second",
        init_adapter="first",
        **{"rehearsal.share": 0.5, "train.max_steps": 1, "train.lr": 1e-12, "train.batch_size": 4},
    )
    second = run(cfg)
    manifest = read_manifest(second)
    continual = manifest.metrics["continual"]
    assert continual["init_adapter"]["name"] == "first"
    assert continual["replayed"] == len([r for r in fact_rows() if r["split"] == "train"]) // 2
    assert continual["frozen_left_out"] == 1  # its question is now a training record: not scored as unseen
    assert continual["frozen_records"] == len(old_test) - 1
    assert {"previous", "adapter", "exact_match_change"} <= set(continual["frozen"]) and "new" in continual
    assert any(p.role == "init_adapter" for p in manifest.parents)
    a, b = load_file(first / "adapter_model.safetensors"), load_file(second / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all((a[k] - b[k]).abs().max() < 1e-6 for k in a)  # it started from first's


def test_an_init_adapter_that_is_not_an_adapter_is_refused(enclave_home, tiny_checkpoint, facts_file):
    with pytest.raises(EnclaveError, match="init_adapter"):
        run(_config(tiny_checkpoint, facts_file, name="x", init_adapter=str(tiny_checkpoint)))


def test_dpo_on_rated_pairs_after_sft_with_trl(enclave_home, tiny_checkpoint, tmp_path):
    """preference.method=dpo: the chat records train as usual, then TRL's DPOTrainer on the pairs;
    its frozen reference copy is not written into the adapter."""
    rows = []
    for i, (q, good, bad) in enumerate(
        [("What does BID mean?", "Twice a day.", "Once a week."), ("What is a tort?", "A civil wrong.", "A cake.")] * 4
    ):
        rows.append({"instruction": f"{q} ({i})", "output": good, "split": "train"})
        prompt = [{"role": "user", "content": f"{q} ({i})"}]
        rows.append({"prompt": prompt, "chosen": good, "rejected": bad, "split": "train"})
    rows.append({"instruction": "What does PRN mean?", "output": "As needed.", "split": "test"})
    data = write_jsonl(tmp_path / "pairs.jsonl", rows)
    extra = {"preference.method": "dpo", "preference.steps": 3, "preference.lr": 1e-3, "train.batch_size": 4}
    out = run(_config(tiny_checkpoint, data, name="dpo", **extra))
    metrics = read_manifest(out).metrics
    assert metrics["dpo"]["pairs"] == 8 and metrics["dpo"]["final_loss"] is not None
    assert metrics["steps"] > 0  # the usual training ran first, on the 8 chat records
    assert not (out / "ref").exists()
    weights = load_file(out / "adapter_model.safetensors")
    assert weights and not any(".ref." in k for k in weights)
