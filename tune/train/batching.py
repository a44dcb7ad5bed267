"""Deterministic batches: the order depends only on the seed and the epoch, so a resumed or
multi-rank run sees exactly the batches an uninterrupted single-rank run sees.
"""

from __future__ import annotations

import numpy as np
import torch

from tune.data.tokenize import IGNORE, Example

MEGABATCH = 50  # length grouping sorts within windows of 50 batches (as HF's LengthGroupedSampler)


def epoch_batches(lengths: list[int], batch_size: int, seed: int, epoch: int, group_by_length: bool) -> list[list[int]]:
    """The global batches (lists of example indices) of one epoch."""
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths))
    if group_by_length:
        window = MEGABATCH * batch_size
        order = np.concatenate(
            [sorted(order[i : i + window], key=lambda j: -lengths[j]) for i in range(0, len(order), window)]
        )
    batches = [order[i : i + batch_size].tolist() for i in range(0, len(order), batch_size)]
    if group_by_length:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


def shard(batch: list[int], grad_accum: int, rank: int, world: int) -> list[list[int]]:
    """This rank's micro-batches of a global batch: split into accumulation steps, then ranks."""
    micro = [m.tolist() for m in np.array_split(np.array(batch), grad_accum)]
    return [[int(i) for i in np.array_split(np.array(m), world)[rank]] for m in micro]


def collate(examples: list[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest example; padding is masked from attention and loss."""
    width = max(e.length for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for i, e in enumerate(examples):
        ids[i, : e.length] = torch.tensor(e.input_ids)
        labels[i, : e.length] = torch.tensor(e.labels)
        mask[i, : e.length] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def answer_token_count(examples: list[Example]) -> int:
    """Tokens that carry loss (labels shift by one: the first token is never predicted)."""
    return sum(sum(1 for t in e.labels[1:] if t != IGNORE) for e in examples)
