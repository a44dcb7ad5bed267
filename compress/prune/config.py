"""Settings of the prune step; registering them here makes `enclave compress prune` and the
``step: prune`` recipe entry (``compress.registry``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from compress.registry import register
from compress.settings import Calibration, Step


@register(
    "prune", module="compress.prune.run", order=20, help="magnitude, Wanda or SparseGPT pruning, unstructured or N:M"
)
class PruneSettings(Step):
    """Remove weights: magnitude, Wanda or SparseGPT; unstructured or N:M."""

    step: Literal["prune"] = "prune"
    algorithm: Literal["magnitude", "wanda", "sparsegpt"] = "sparsegpt"
    """magnitude (|W|), wanda (|W| x input norm) or sparsegpt (second-order, with weight updates)."""
    sparsity: float = Field(0.5, gt=0.0, lt=1.0)
    """Share of weights set to zero in each pruned layer (unstructured pattern)."""
    pattern: Literal["unstructured", "2:4", "4:8"] = "unstructured"
    """unstructured, or N:M: N zeros in every M consecutive input weights (2:4 runs fast on sparse hardware)."""
    skip: list[str] = ["lm_head", "embed_tokens"]
    """Modules left dense (matched on the last part of the name)."""
    calibration: Calibration = Calibration()
    """Calibration text (not used by magnitude pruning)."""
    blocksize: int = Field(128, ge=1)
    """SparseGPT column block size."""
    dampening: float = Field(0.01, ge=0.0)
    """SparseGPT: share of the mean Hessian diagonal added for numerical stability."""
