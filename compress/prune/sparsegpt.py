"""SparseGPT: prune with second-order (OBS) weight updates that compensate the error.

Frantar & Alistarh, 2023, "SparseGPT: Massive Language Models Can Be Accurately Pruned in
One-Shot" (arXiv:2301.00774), Algorithm 1; the block-wise adaptive mask selection and the
Cholesky form of the inverse Hessian follow the authors' reference implementation.
"""

from __future__ import annotations

import torch


def inverse_hessian_cholesky(hessian: torch.Tensor, dampening: float) -> torch.Tensor:
    """Upper Cholesky factor of (H + λI)^-1, λ = dampening x mean(diag H)."""
    h = hessian.clone()
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    h += torch.eye(h.size(0)) * dampening * torch.mean(torch.diag(h))
    h = torch.cholesky_inverse(torch.linalg.cholesky(h))
    return torch.linalg.cholesky(h, upper=True)


def prune(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    sparsity: float,
    nm: tuple[int, int] | None,
    blocksize: int = 128,
    dampening: float = 0.01,
) -> torch.Tensor:
    """Return the pruned and updated weight.

    Args:
        weight: (out, in).
        hessian: (in, in), 2/n * X^T X over calibration tokens.
        sparsity: share pruned (unstructured), chosen per block of columns.
        nm: (n, m) for N:M sparsity, or None.
        blocksize: columns processed together.
        dampening: relative diagonal dampening of H.
    """
    w = weight.clone().float()
    dead = torch.diag(hessian) == 0
    w[:, dead] = 0
    hinv = inverse_hessian_cholesky(hessian, dampening)
    cols = w.size(1)
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        w1, hinv1 = w[:, i1:i2].clone(), hinv[i1:i2, i1:i2]
        q1, err1 = torch.zeros_like(w1), torch.zeros_like(w1)
        d = torch.diag(hinv1)
        if nm is None:  # adaptive mask: lowest w^2 / [H^-1]_jj^2 within the block
            score = w1**2 / d.unsqueeze(0) ** 2
            mask1 = score <= torch.sort(score.flatten())[0][int(score.numel() * sparsity)]
        else:
            mask1 = torch.zeros_like(w1, dtype=torch.bool)
        for i in range(i2 - i1):
            col = w1[:, i]
            if nm is not None and i % nm[1] == 0:
                score = w1[:, i : i + nm[1]] ** 2 / d[i : i + nm[1]].unsqueeze(0) ** 2
                mask1.scatter_(1, i + torch.topk(score, nm[0], dim=1, largest=False).indices, True)
            q = col.masked_fill(mask1[:, i], 0.0)
            q1[:, i] = q
            e = (col - q) / d[i]
            w1[:, i:] -= e.unsqueeze(1) @ hinv1[i, i:].unsqueeze(0)  # OBS update of the remaining columns
            err1[:, i] = e
        w[:, i1:i2] = q1
        w[:, i2:] -= err1 @ hinv[i1:i2, i2:]
    return w.to(weight.dtype)
