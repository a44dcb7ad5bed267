"""Settings of the quantize step; registering them here makes `enclave compress quantize` and the
``step: quantize`` recipe entry (``compress.registry``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from compress.registry import register
from compress.settings import Calibration, Step


@register(
    "quantize",
    module="compress.quantize.run",
    order=40,
    help="GPTQ or round-to-nearest weight quantization (GPTQModel), GPTQ format",
)
class QuantizeSettings(Step):
    """Weight-only quantization with GPTQModel: GPTQ (with calibration) or round-to-nearest."""

    step: Literal["quantize"] = "quantize"
    method: Literal["gptq", "rtn"] = "gptq"
    """gptq (second-order error compensation, needs calibration) or rtn (round-to-nearest, the baseline)."""
    bits: Literal[2, 3, 4, 8] = 4
    """Bits per weight."""
    group_size: int = Field(64, ge=-1)
    """Weights sharing one scale along the input dimension; must divide every layer's input width
    (SmolLM2: 576 and 1536, so 32 or 64, not 128); -1 is one scale per output row."""
    sym: bool = True
    """Symmetric quantization (no zero point); vLLM's CPU and Marlin kernels want true."""
    act_order: bool = False
    """Quantize columns in order of decreasing activation size (GPTQ desc_act); slower kernels."""
    group_aware: bool = True
    """GPTQModel's group-aware reordering (act order without its runtime cost); off with act_order."""
    damping: float = Field(0.05, gt=0.0, lt=1.0)
    """Share of the mean Hessian diagonal added for numerical stability (GPTQ damp_percent)."""
    clip_search: float = Field(2.4, ge=0.0)
    """GPTQ: search each group's scale for the least error in this norm (the reference GPTQ code's
    mse option; 2.4 there); 0 uses plain min/max scales."""
    calibration: Calibration = Calibration(
        source=["builtin:clinical_legal", "builtin:psf_license", "builtin:legal_texts"], samples=96
    )
    """Calibration text (not used by rtn): by default the train split of the tuning data and legal prose,
    96 x 256 tokens (of about 27,000 SmolLM2 tokens there are)."""
    batch_size: int = Field(4, ge=1)
    """Calibration sequences per forward pass."""
