"""Fixtures for tune tests: a small instruction data set the tiny tokenizer can encode."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

FACTS = [
    ("bid", "twice a day"), ("tid", "three times a day"), ("qid", "four times a day"), ("prn", "as needed"),
    ("po", "by mouth"), ("npo", "nothing by mouth"), ("stat", "immediately"), ("qhs", "at bedtime"),
    ("tort", "a civil wrong"), ("bail", "money for release"), ("writ", "a court order"), ("plea", "an answer to a charge"),
]  # fmt: skip


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def fact_rows() -> list[dict]:
    rows = []
    for i, (key, answer) in enumerate(FACTS):
        group = "clinical" if i < 8 else "legal"
        rows += [
            {"instruction": f"What does {key} mean?", "output": answer, "group": group, "split": "train"},
            {"instruction": f"Define {key} for me.", "output": answer, "group": group, "split": "train"},
            {"instruction": f"The term {key} stands for what?", "output": answer, "group": group, "split": "validation"},
            {"instruction": f"Tell me what {key} means, please.", "output": answer, "group": group, "split": "test"},
        ]
    return rows


@pytest.fixture()
def facts_file(tmp_path) -> Path:
    return write_jsonl(tmp_path / "facts.jsonl", fact_rows())


def tiny_overrides(base: Path, data: Path, **extra) -> list[str]:
    """A quick recipe for the tiny model: a handful of steps, no dropout (exact comparisons)."""
    values = {
        "name": "tiny", "base_model": str(base), "data.path": str(data), "data.max_length": 64,
        "lora.r": 4, "lora.alpha": 8, "lora.dropout": 0.1, "train.lr": 0.01, "train.batch_size": 8,
        "train.max_steps": 6, "train.eval_every": 2, "train.checkpoint_every": 2, "train.patience": "null",
        "eval.max_new_tokens": 4, "eval.compare_base": "false",
    }  # fmt: skip
    values.update(extra)
    return [f"{k}={v}" for k, v in values.items()]
