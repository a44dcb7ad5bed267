"""Helpers for tune tests: a quick recipe for the tiny model."""

from __future__ import annotations

from pathlib import Path


def tiny_overrides(base: Path, data: Path, **extra) -> list[str]:
    """A quick recipe for the tiny model: a handful of steps; tests override what they compare."""
    values = {
        "name": "tiny",
        "base_model": str(base),
        "data.path": str(data),
        "data.max_length": 64,
        "lora.r": 4,
        "lora.alpha": 8,
        "lora.dropout": 0.1,
        "train.lr": 0.01,
        "train.batch_size": 8,
        "train.max_steps": 6,
        "train.eval_every": 2,
        "train.checkpoint_every": 2,
        "train.patience": "null",
        "eval.max_new_tokens": 4,
        "eval.compare_base": "false",
    }
    values.update(extra)
    return [f"{k}={v}" for k, v in values.items()]
