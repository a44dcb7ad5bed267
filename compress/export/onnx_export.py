"""ONNX export with KV cache through the ONNX Runtime GenAI model builder, then checked.

The builder (``onnxruntime_genai.models.builder``) writes ``model.onnx`` (+ external data),
``genai_config.json`` and the tokenizer; it fuses attention into GroupQueryAttention with a
KV cache and, for int8/int4, stores weights as MatMulNBits (a GPTQ checkpoint keeps its own
4-bit weights and group size). optimum's exporter is not used: it pins transformers < 4.58.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from compress.export.config import ExportSettings
from enclave.deps import require
from enclave.errors import EnclaveError
from enclave.onnx_runtime import MODEL_FILE, Generator

log = logging.getLogger(__name__)
# ONNX Runtime contrib ops that the builder emits in the default ONNX domain; onnx.checker
# knows them only under ORT's own domain (ORT itself validates them when it loads the model).
_ORT_OPS_IN_DEFAULT_DOMAIN = {"SimplifiedLayerNormalization"}


def check_precision(settings: ExportSettings, quant_bits: int | None) -> None:
    """Refuse a precision the builder cannot produce from this input."""
    if quant_bits is not None and (quant_bits != 4 or settings.precision != "int4"):
        raise EnclaveError(
            f"precision {settings.precision!r} for a {quant_bits}-bit GPTQ input: "
            "the builder keeps GPTQ weights only as int4",
            fix="set precision: int4 (or export the unquantized artifact for fp32/int8)",
        )


def build(source: Path, settings: ExportSettings, quant_bits: int | None, out: Path) -> None:
    """Run the model builder from ``source`` (an HF checkpoint) into ``out``.

    Raises:
        EnclaveError: a GPTQ input with a precision other than int4, or the builder failed.
    """
    require("onnxruntime_genai", "compress")
    check_precision(settings, quant_bits)
    extra = ["hf_token=false", "hf_remote=false"]
    if settings.precision != "fp32":
        extra.append(f"accuracy_level={settings.accuracy_level}")
        if quant_bits is None:
            extra.append(f"block_size={settings.block_size}")
    if settings.precision == "int4":
        extra.append(f"algo_config={settings.int4_method}")  # also the embeddings and lm_head of a GPTQ input
        if settings.lm_head_int8:
            extra.append("matmul_mixed_precision=last_matmul:int8")
    # Named like the draft (".NAME.tmp-..."), so a rerun after kill -9 removes it with the draft.
    with tempfile.TemporaryDirectory(prefix=f"{out.name}-cache-", dir=out.parent) as cache:
        cmd = [
            sys.executable,
            "-m",
            "onnxruntime_genai.models.builder",
            "-i",
            str(source),
            "-o",
            str(out),
            "-p",
            settings.precision,
            "-e",
            "cpu",
            "-c",
            cache,
            "--extra_options",
            *extra,
        ]
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        log.info("building ONNX (%s) with the ONNX Runtime GenAI model builder", settings.precision)
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0 or not (out / MODEL_FILE).is_file():
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-5:])
        raise EnclaveError(
            f"the ONNX model builder failed on {source}:\n{tail}",
            fix="check that the source is a supported architecture (enclave models show)",
        )


def check_graph(root: Path) -> None:
    """onnx.checker on the exported graph (external weights are checked in place)."""
    onnx = require("onnx", "compress")
    model = onnx.load(str(root / MODEL_FILE), load_external_data=False)
    for node in model.graph.node:
        if node.op_type in _ORT_OPS_IN_DEFAULT_DOMAIN and node.domain == "":
            node.domain = "com.microsoft"
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))
    probe = root / ".checker-probe.onnx"  # beside model.onnx so its external-data paths resolve
    try:
        onnx.save(model, str(probe))
        onnx.checker.check_model(str(probe))
    except onnx.checker.ValidationError as exc:
        raise EnclaveError(f"onnx.checker rejected {root / MODEL_FILE}: {exc}") from None
    finally:
        probe.unlink(missing_ok=True)


def compare_greedy(root: Path, reference: list[list[int]], prompts: list[list[int]], new_tokens: int) -> dict:
    """Greedy tokens of the ONNX model against PyTorch's on the same prompts."""
    gen = Generator(root)
    same, first_diff = 0, []
    for ids, ref in zip(prompts, reference):
        got, _, _ = gen.greedy(ids, new_tokens)
        same += got == ref
        first_diff.append(
            next((i for i, (a, b) in enumerate(zip(got, ref)) if a != b), min(len(got), len(ref)))
            if got != ref
            else None
        )
    return {"greedy_identical_prompts": same, "greedy_prompts": len(prompts), "greedy_first_difference": first_diff}
