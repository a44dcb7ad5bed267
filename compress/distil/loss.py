"""The distillation objective (Hinton et al., 2015, "Distilling the Knowledge in a Neural Network").

loss = alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) * CE(student, next token)
The T^2 factor keeps the soft-target gradients on the same scale as the hard-target ones.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def distillation_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor, temperature: float, alpha: float
) -> tuple[torch.Tensor, float, float]:
    """Mean over tokens; returns (loss, kl, ce) with kl and ce as floats for logging.

    Args:
        student_logits, teacher_logits: (B, T, V), already aligned with ``labels``.
        labels: (B, T) next-token ids.
    """
    v = student_logits.size(-1)
    s = F.log_softmax(student_logits.reshape(-1, v) / temperature, dim=-1)
    t = F.log_softmax(teacher_logits.reshape(-1, v) / temperature, dim=-1)
    kl = F.kl_div(s, t, log_target=True, reduction="batchmean") * temperature**2
    ce = F.cross_entropy(student_logits.reshape(-1, v), labels.reshape(-1))
    return alpha * kl + (1 - alpha) * ce, kl.item(), ce.item()
