"""Settings of the export step; registering them here makes `enclave compress export` and the
``step: export`` recipe entry (``compress.registry``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from compress.registry import register
from compress.settings import Step


@register(
    "export",
    module="compress.export.run",
    order=50,
    help="ONNX (with KV cache, fp32/int8/int4) or a vLLM directory, checked after writing",
)
class ExportSettings(Step):
    """Write a serving artifact: ONNX with KV cache (ONNX Runtime GenAI) or a vLLM directory."""

    step: Literal["export"] = "export"
    format: Literal["onnx", "vllm"] = "onnx"
    """onnx (ONNX Runtime, runs on any CPU) or vllm (HF layout with quantization_config, adapters beside it)."""
    precision: Literal["fp32", "int8", "int4"] = "fp32"
    """ONNX weights: fp32, or int8/int4 MatMulNBits (weight-only, activations quantized on the fly
    at accuracy_level 4). A GPTQ input keeps its own 4-bit weights and needs int4."""
    block_size: Literal[16, 32, 64, 128, 256] = 32
    """ONNX int8/int4: weights sharing one scale (ignored for a GPTQ input, which keeps its group size)."""
    int4_method: Literal["k_quant", "rtn"] = "k_quant"
    """ONNX int4: how the builder quantizes weights not already quantized by GPTQ (k_quant: llama.cpp's
    k-quants; rtn: round-to-nearest)."""
    lm_head_int8: bool = True
    """ONNX int4: keep the output layer, the largest and most sensitive matrix, at 8 bits
    (on the demo model: held-out perplexity 49.1 with it at 4 bits, 43.0 at 8, for 15 MB)."""
    accuracy_level: Literal[0, 1, 2, 3, 4] = 4
    """ONNX int8/int4: compute type of MatMulNBits (4: int8 activations, fastest on VNNI CPUs; 0: unset)."""
    check_tokens: int = Field(32, ge=1)
    """Greedy tokens compared with PyTorch on each sample prompt (fp32 must match exactly)."""
    adapters: list[str] = []
    """vllm: LoRA adapters (paths or names in $ENCLAVE_HOME/adapters; repeat --adapters) copied beside the model;
    their base must be the exported model or one it was quantized or pruned from, not merged into."""
    vllm_python: str | None = None
    """vllm: a Python with vLLM installed, used to load the directory and generate (default:
    $ENCLAVE_VLLM_PYTHON, which `make` sets to .venv-vllm's; without one the check is skipped)."""

    def default_suffix(self) -> str:
        """Exports are named by format: NAME-onnx, NAME-vllm."""
        return self.format
