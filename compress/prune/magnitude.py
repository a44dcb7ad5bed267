"""Magnitude pruning: drop the weights with the smallest |W| (the classic baseline;
Han et al., 2015, "Learning both Weights and Connections for Efficient Neural Networks")."""

from __future__ import annotations

import torch

from compress.prune.masks import n_of_m, unstructured


def prune(weight: torch.Tensor, sparsity: float, nm: tuple[int, int] | None) -> torch.Tensor:
    """Return the pruned weight. Unstructured pruning uses one threshold per matrix."""
    score = weight.abs()
    mask = n_of_m(score, *nm) if nm else unstructured(score, sparsity, per_row=False)
    return weight.masked_fill(mask, 0.0)
