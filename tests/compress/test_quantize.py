"""quantize on a tiny model: GPTQ and round-to-nearest through GPTQModel, loaded back two ways."""

import json

import pytest
import torch

from compress import registry
from compress.io import logical_parameters
from compress.quantize.config import QuantizeSettings
from compress.quantize.run import check_group_size, input_widths
from compress.settings import Calibration
from enclave.errors import EnclaveError
from enclave.hf.loader import load
from enclave.manifest import read_manifest, verify
from enclave.store import resolve_model

pytest.importorskip("gptqmodel")
CAL = Calibration(source="builtin:clinical_legal", samples=8, seq_len=32)


@pytest.fixture(scope="module")
def quantized(tmp_path_factory, tiny_wide_checkpoint):
    """GPTQ and RTN artifacts of the tiny model at 4 bits, group 32."""
    root = tmp_path_factory.mktemp("quantized")
    out = {}
    for method in ("gptq", "rtn"):
        settings = QuantizeSettings(method=method, group_size=32, calibration=CAL)
        out[method] = registry.get("quantize").run(str(tiny_wide_checkpoint), settings, root / method, method)
    return out


def test_group_size_must_divide_every_input_width(tiny_wide_checkpoint):
    assert input_widths(tiny_wide_checkpoint) == {64, 128}
    check_group_size(tiny_wide_checkpoint, 32)
    check_group_size(tiny_wide_checkpoint, -1)
    with pytest.raises(EnclaveError, match=r"group_size 48 does not divide the input widths \[64, 128\]") as err:
        check_group_size(tiny_wide_checkpoint, 48)
    assert "64 or 32" in err.value.fix


def test_artifact_is_a_gptq_checkpoint_without_machine_paths(quantized, tiny_wide_checkpoint):
    for method, path in quantized.items():
        m, problems = verify(path)
        assert problems == [] and m.kind == "quantized" and m.settings["method"] == method
        config = json.loads((path / "config.json").read_text())
        qc = config["quantization_config"]
        assert (qc["quant_method"], qc["bits"], qc["group_size"], qc["sym"]) == ("gptq", 4, 32, True)
        assert "offload" not in (path / "config.json").read_text() + (path / "quantize_config.json").read_text()
        # GPTQModel rewrites generation settings (do_sample); the source's are kept.
        assert (path / "generation_config.json").read_text() == (
            tiny_wide_checkpoint / "generation_config.json"
        ).read_text()
    assert len(read_manifest(quantized["gptq"]).metrics["quant_loss_per_layer"]) == 14


def test_transformers_and_gptqmodel_load_it_close_to_the_original(quantized, tiny_wide_checkpoint):
    from gptqmodel import GPTQModel

    original, tokenizer = load(resolve_model(str(tiny_wide_checkpoint), verify=False))
    ids = tokenizer("The patient was given 5 mg of the drug twice a day.", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        ref = original(input_ids=ids).logits
        via_transformers, _ = load(resolve_model(str(quantized["gptq"])))
        a = via_transformers(input_ids=ids).logits
        b = GPTQModel.load(str(quantized["gptq"]), device="cpu", dtype=torch.float32).model(input_ids=ids).logits
    assert logical_parameters(via_transformers) == logical_parameters(original)
    assert (a - b).abs().max() < 0.02  # two kernels, same weights
    assert 0 < (a - ref).abs().max() < 0.5 * ref.abs().max()


def test_gptq_beats_round_to_nearest_on_calibration_like_text(quantized, tiny_wide_checkpoint):
    from compress.text import calibration_batches

    original, tokenizer = load(resolve_model(str(tiny_wide_checkpoint), verify=False))
    ids = calibration_batches(tokenizer, "builtin:clinical_legal", 12, 32).ids[8:]  # past the 8 calibration rows
    with torch.no_grad():
        ref = original(input_ids=ids).logits
        err = {
            k: (load(resolve_model(str(p)))[0](input_ids=ids).logits - ref).pow(2).mean().item()
            for k, p in quantized.items()
        }
    assert err["gptq"] < err["rtn"]


def test_quantizing_twice_is_refused(quantized, tmp_path):
    with pytest.raises(EnclaveError, match="already quantized"):
        registry.get("quantize").run(
            str(quantized["gptq"]), QuantizeSettings(group_size=32, calibration=CAL), tmp_path / "q", "q"
        )


def test_a_rerun_after_kill_removes_the_killed_runs_scratch(tiny_wide_checkpoint, tmp_path):
    # What kill -9 during quantization leaves: the draft and GPTQModel's offload directory beside it.
    for stale in (".q.tmp-0123456789ab", ".q.tmp-0123456789ab-offload-x1y2"):
        (tmp_path / stale).mkdir()
        (tmp_path / stale / "part").write_bytes(b"half written")
    out = registry.get("quantize").run(
        str(tiny_wide_checkpoint), QuantizeSettings(method="rtn", group_size=32), tmp_path / "q", "q"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q"] and verify(out)[1] == []
