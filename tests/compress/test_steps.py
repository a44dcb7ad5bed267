"""merge, prune, recipe and report on the tiny model: real artifacts, real numbers."""

import json

import pytest
import torch
from safetensors.torch import load_file

from compress import registry
from compress.config import CompressRecipe, EvalSettings
from compress.merge.config import MergeSettings
from compress.prune.config import PruneSettings
from compress.recipe import run_recipe
from compress.report import report
from compress.settings import Calibration
from enclave.config import load_config
from enclave.errors import EnclaveError
from enclave.manifest import read_manifest, verify
from enclave.store.importer import import_model
from tests.tune.conftest import tiny_overrides
from tune.config import TuneConfig
from tune.run import run as tune

CAL = Calibration(source="builtin:clinical_legal", samples=8, seq_len=32)


@pytest.fixture()
def adapter(enclave_home, tiny_checkpoint, facts_file):
    import_model(tiny_checkpoint, "tiny")
    return tune(
        load_config(
            TuneConfig, None, tiny_overrides("tiny", facts_file, **{"lora.target_modules": "[q_proj, v_proj, up_proj]"})
        )
    )


def test_merge_records_lineage_and_matches_the_adapter(enclave_home, adapter, tmp_path):
    out = registry.get("merge").run("tiny", MergeSettings(adapter=str(adapter)), tmp_path / "merged", "merged")
    m, problems = verify(out)
    assert problems == [] and m.kind == "merged"
    assert [p.role for p in m.parents] == ["base", "adapter"]
    assert m.parents[1].digest == read_manifest(adapter).digest
    assert m.metrics["max_logit_diff"] < 1e-4 and m.metrics["same_argmax"]
    assert not any("lora" in k for k in load_file(out / "model.safetensors"))


@pytest.mark.parametrize("algorithm", ["magnitude", "wanda", "sparsegpt"])
@pytest.mark.parametrize("pattern", ["unstructured", "2:4"])
def test_prune_hits_the_target_and_skips_embeddings(enclave_home, tiny_checkpoint, tmp_path, algorithm, pattern):
    settings = PruneSettings(algorithm=algorithm, pattern=pattern, sparsity=0.5, calibration=CAL)
    out = registry.get("prune").run(str(tiny_checkpoint), settings, tmp_path / "p", "p")
    m = read_manifest(out)
    assert m.kind == "pruned" and m.metrics["sparsity"] == pytest.approx(0.5, abs=0.02)
    assert set(m.metrics["sparsity_per_layer"]) == {
        f"model.layers.{i}.{n}"
        for i in range(2)
        for n in (
            "self_attn.q_proj",
            "self_attn.k_proj",
            "self_attn.v_proj",
            "self_attn.o_proj",
            "mlp.gate_proj",
            "mlp.up_proj",
            "mlp.down_proj",
        )
    }
    w = load_file(out / "model.safetensors")
    assert torch.equal(
        w["model.embed_tokens.weight"], load_file(tiny_checkpoint / "model.safetensors")["model.embed_tokens.weight"]
    )
    if pattern == "2:4":
        q = w["model.layers.0.mlp.up_proj.weight"]
        assert ((q.reshape(q.size(0), -1, 4) == 0).sum(-1) >= 2).all()


def test_too_little_calibration_text_says_how_much(enclave_home, tiny_checkpoint, tmp_path):
    (tmp_path / "small.txt").write_text("The patient was given aspirin. " * 20)
    settings = PruneSettings(
        algorithm="wanda", calibration=Calibration(source=str(tmp_path / "small.txt"), samples=64, seq_len=256)
    )
    with pytest.raises(EnclaveError, match=r"has \d+ tokens; 64 samples x 256 tokens need 16,384"):
        registry.get("prune").run(str(tiny_checkpoint), settings, tmp_path / "p", "p")
    assert not (tmp_path / "p").exists()


def test_recipe_chains_steps_and_reports(enclave_home, adapter, tmp_path):
    recipe = CompressRecipe(
        name="demo",
        model="tiny",
        output_dir=str(tmp_path / "arts"),
        steps=[MergeSettings(adapter=str(adapter)), PruneSettings(algorithm="wanda", calibration=CAL)],
        eval=EvalSettings(max_tokens=256),
    )
    merged, pruned = run_recipe(recipe, measure=False)
    assert read_manifest(pruned).parents[0].digest == read_manifest(merged).digest
    rows = report(["tiny", str(merged), str(pruned)], recipe.eval, tmp_path / "report", task_data=None)
    assert [r["kind"] for r in rows] == ["base_model", "merged", "pruned"]
    assert rows[2]["sparsity"] > 0.4 and rows[0]["sparsity"] == 0.0
    assert all(r["perplexity"] > 1 and r["decode_tokens_per_second"] > 0 for r in rows)
    saved = json.loads((tmp_path / "report" / "report.json").read_text())
    assert len(saved["rows"]) == 3 and (tmp_path / "report" / "report.png").stat().st_size > 1000
    assert "| merged |" in (tmp_path / "report" / "report.md").read_text().replace("demo-merge", "merged")
    assert read_manifest(pruned).metrics["report"]["perplexity"] == pytest.approx(rows[2]["perplexity"])
    assert verify(pruned)[1] == []


def test_unknown_step_lists_known():
    with pytest.raises(EnclaveError, match="available: distil, export, merge, prune, quantize"):
        registry.get("quantise")
