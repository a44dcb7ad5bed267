"""export on a tiny model: ONNX (fp32, int4, from GPTQ) checked against PyTorch; vLLM directories."""

import json

import numpy as np
import pytest
import torch

from compress import registry
from compress.export.config import ExportSettings
from compress.quantize.config import QuantizeSettings
from compress.settings import Calibration
from compress.text import perplexity, read_source
from enclave.errors import EnclaveError
from enclave.evaluation.lm import OnnxLM
from enclave.evaluation.perplexity import text_perplexity
from enclave.hf.loader import load
from enclave.manifest import read_manifest, verify
from enclave.onnx_runtime import LogitsSession
from enclave.store import resolve_model
from enclave.store.importer import import_model
from tests.tune.conftest import tiny_overrides
from tune.config import TuneConfig
from tune.run import run as tune

pytest.importorskip("onnxruntime_genai")
CAL = Calibration(source="builtin:clinical_legal", samples=8, seq_len=32)
HELDOUT = "builtin:heldout_apache2"


@pytest.fixture(scope="module")
def onnx_fp32(tmp_path_factory, tiny_wide_checkpoint):
    out = tmp_path_factory.mktemp("onnx") / "fp32"
    return registry.get("export").run(
        str(tiny_wide_checkpoint), ExportSettings(precision="fp32", check_tokens=12), out, "fp32"
    )


def test_fp32_onnx_passes_the_checker_and_matches_pytorch(onnx_fp32, tiny_wide_checkpoint):
    m, problems = verify(onnx_fp32)
    assert problems == [] and m.kind == "onnx"
    assert {"model.onnx", "model.onnx.data", "genai_config.json", "tokenizer.json"} <= {f.path for f in m.files}
    assert m.metrics["onnx_checker"] == "passed"
    assert m.metrics["greedy_identical_prompts"] == m.metrics["greedy_prompts"] == 3
    model, tokenizer = load(resolve_model(str(tiny_wide_checkpoint), verify=False))
    ids = tokenizer("The court granted the motion to dismiss.")["input_ids"]
    with torch.no_grad():
        ref = model(input_ids=torch.tensor([ids])).logits[0].numpy()
    assert np.abs(LogitsSession(onnx_fp32).logits(ids) - ref).max() < 1e-4
    heldout = tokenizer(read_source(HELDOUT), add_special_tokens=False)["input_ids"][
        :101
    ]  # the tiny model's context is 128
    expected = perplexity(model, tokenizer, HELDOUT, max_tokens=100, window=100)
    assert text_perplexity(OnnxLM(onnx_fp32), heldout, window=100) == pytest.approx(expected, rel=1e-4)


def test_int4_onnx_and_onnx_from_gptq(tmp_path, tiny_wide_checkpoint):
    pytest.importorskip("gptqmodel")
    out = registry.get("export").run(
        str(tiny_wide_checkpoint), ExportSettings(precision="int4", block_size=32), tmp_path / "int4", "int4"
    )
    assert read_manifest(out).metrics["precision"] == "int4"
    assert (out / "model.onnx.data").stat().st_size < (tiny_wide_checkpoint / "model.safetensors").stat().st_size
    gptq = registry.get("quantize").run(
        str(tiny_wide_checkpoint), QuantizeSettings(group_size=32, calibration=CAL), tmp_path / "gptq", "gptq"
    )
    with pytest.raises(EnclaveError, match="builder keeps GPTQ weights only as int4"):
        registry.get("export").run(str(gptq), ExportSettings(precision="fp32"), tmp_path / "bad", "bad")
    assert not (tmp_path / "bad").exists()
    out = registry.get("export").run(str(gptq), ExportSettings(precision="int4"), tmp_path / "from-gptq", "from-gptq")
    m = read_manifest(out)
    assert m.metrics["source_quantization"] == "gptq" and m.parents[0].digest == read_manifest(gptq).digest
    assert m.metrics["greedy_identical_prompts"] >= 2  # same 4-bit weights, another kernel


@pytest.fixture()
def wide_adapter(enclave_home, tiny_wide_checkpoint, facts_file):
    import_model(tiny_wide_checkpoint, "tiny-wide")
    return tune(load_config_for("tiny-wide", facts_file))


def load_config_for(base, data):
    from enclave.config import load_config

    return load_config(TuneConfig, None, tiny_overrides(base, data, name="wide-lora"))


def test_vllm_directory_with_adapter_beside_it(wide_adapter, enclave_home, tmp_path):
    # No ENCLAVE_VLLM_PYTHON in unit tests (tests/conftest.py): the vLLM load is skipped, and said so.
    out = registry.get("export").run(
        "tiny-wide", ExportSettings(format="vllm", adapters=[str(wide_adapter)]), tmp_path / "v", "v"
    )
    m, problems = verify(out)
    assert problems == [] and m.kind == "vllm" and m.metrics["vllm_checked"] is False
    assert m.metrics["adapters"] == ["wide-lora"]
    assert (out / "adapters" / "wide-lora" / "adapter_model.safetensors").is_file()
    assert verify(out / "adapters" / "wide-lora")[1] == []
    assert json.loads((out / "config.json").read_text())["model_type"] == "llama"


def test_vllm_refuses_an_adapter_for_another_base(wide_adapter, enclave_home, tiny_checkpoint, tmp_path):
    import_model(tiny_checkpoint, "tiny")
    with pytest.raises(
        EnclaveError, match=r"trained on base sha256:[0-9a-f]{64}, which is not .*tiny \(sha256:[0-9a-f]{64}\)"
    ):
        registry.get("export").run(
            "tiny", ExportSettings(format="vllm", adapters=[str(wide_adapter)]), tmp_path / "v", "v"
        )
    assert not (tmp_path / "v").exists()


def test_vllm_python_that_does_not_exist_is_named(enclave_home, tiny_wide_checkpoint, tmp_path, monkeypatch):
    with pytest.raises(EnclaveError, match="vllm_python '/nowhere/python' does not exist"):
        registry.get("export").run(
            str(tiny_wide_checkpoint), ExportSettings(format="vllm", vllm_python="/nowhere/python"), tmp_path / "v", "v"
        )
    monkeypatch.setenv("ENCLAVE_VLLM_PYTHON", "/nowhere/else")
    with pytest.raises(EnclaveError, match="ENCLAVE_VLLM_PYTHON '/nowhere/else' does not exist"):
        registry.get("export").run(str(tiny_wide_checkpoint), ExportSettings(format="vllm"), tmp_path / "v", "v")


def test_recipe_exports_are_leaves_and_the_report_times_onnx(enclave_home, tiny_wide_checkpoint, tmp_path):
    pytest.importorskip("gptqmodel")
    from compress.config import CompressRecipe, EvalSettings
    from compress.recipe import run_recipe
    from compress.report import report

    recipe = CompressRecipe(
        name="demo",
        model=str(tiny_wide_checkpoint),
        output_dir=str(tmp_path / "arts"),
        steps=[
            QuantizeSettings(method="rtn", group_size=32),
            ExportSettings(precision="int4"),
            ExportSettings(format="vllm"),
        ],
    )
    quantized, onnx, vllm = run_recipe(recipe, measure=False)
    assert [p.name for p in (quantized, onnx, vllm)] == ["demo-quantize", "demo-onnx", "demo-vllm"]
    assert (
        read_manifest(onnx).parents[0].digest
        == read_manifest(vllm).parents[0].digest
        == read_manifest(quantized).digest
    )
    rows = report([str(quantized), str(onnx)], EvalSettings(max_tokens=100), tmp_path / "report", task_data=None)
    assert [r["engine"] for r in rows] == ["torch gptqmodel", "ort-genai"]
    assert rows[1]["perplexity"] == pytest.approx(rows[0]["perplexity"], rel=0.1)  # same 4-bit weights
    assert rows[1]["decode_tokens_per_second"] > 0 and rows[1]["parameters"] == rows[0]["parameters"]
    assert "sparsity" not in rows[0]  # packed GPTQ weights are not nn.Linear weights


def test_enclave_eval_scores_an_onnx_artifact_like_its_source(onnx_fp32, tiny_wide_checkpoint, facts_file):
    from enclave.config import load_config
    from tune.config import TuneConfig as Cfg
    from tune.data.prepare import prepare
    from tune.eval.artifact import load_for_eval
    from tune.eval.run import evaluate

    cfg = load_config(Cfg, None, [f"data.path={facts_file}", "data.max_length=64"])
    results = []
    for ref in (str(tiny_wide_checkpoint), str(onnx_fp32)):
        model, tokenizer, label, _ = load_for_eval(ref)
        data = prepare(
            cfg.data, tokenizer, getattr(model, "context_length", None) or model.config.max_position_embeddings
        )
        results.append(
            evaluate(model, tokenizer, data.records["test"], data.examples["test"], label, None, 6, 4, 100.0)
        )
    torch_result, onnx_result = results
    assert onnx_result.metrics["perplexity"] == pytest.approx(torch_result.metrics["perplexity"], rel=1e-4)
    assert onnx_result.metrics["token_f1"] == torch_result.metrics["token_f1"]
