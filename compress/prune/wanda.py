"""Wanda: prune by |W_ij| * ||X_j||_2, compared within each output row.

Sun et al., 2023, "A Simple and Effective Pruning Approach for Large Language Models"
(arXiv:2306.11695): no weight update, only the input activation norms of calibration data.
"""

from __future__ import annotations

import torch

from compress.prune.masks import n_of_m, unstructured


def prune(
    weight: torch.Tensor, input_sq_sum: torch.Tensor, sparsity: float, nm: tuple[int, int] | None
) -> torch.Tensor:
    """Return the pruned weight.

    Args:
        weight: (out, in).
        input_sq_sum: (in,) sum over calibration tokens of x_j^2.
        sparsity: share pruned per row (unstructured).
        nm: (n, m) for N:M sparsity, or None.
    """
    score = weight.abs() * input_sq_sum.sqrt().unsqueeze(0)  # (out, in)
    mask = n_of_m(score, *nm) if nm else unstructured(score, sparsity, per_row=True)
    return weight.masked_fill(mask, 0.0)
