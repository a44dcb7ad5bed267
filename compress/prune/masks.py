"""Masks from importance scores: lowest scores are pruned (True = set to zero)."""

from __future__ import annotations

import torch


def unstructured(score: torch.Tensor, sparsity: float, per_row: bool) -> torch.Tensor:
    """Prune the ``sparsity`` share with the lowest score, per output row or per matrix."""
    if per_row:
        k = int(score.size(1) * sparsity)
        idx = torch.topk(score, k, dim=1, largest=False).indices
        return torch.zeros_like(score, dtype=torch.bool).scatter_(1, idx, True)
    k = int(score.numel() * sparsity)
    if k == 0:
        return torch.zeros_like(score, dtype=torch.bool)
    threshold = torch.kthvalue(score.flatten(), k).values
    return score <= threshold


def n_of_m(score: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Prune the ``n`` lowest of every ``m`` consecutive input weights of each row."""
    rows, cols = score.shape
    groups = score.reshape(rows, cols // m, m)
    idx = torch.topk(groups, n, dim=2, largest=False).indices
    return torch.zeros_like(groups, dtype=torch.bool).scatter_(2, idx, True).reshape(rows, cols)


def parse_pattern(pattern: str) -> tuple[int, int] | None:
    """``"2:4"`` → (2, 4); ``"unstructured"`` → None."""
    if pattern == "unstructured":
        return None
    n, m = map(int, pattern.split(":"))
    return n, m
