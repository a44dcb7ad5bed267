"""Settings of the distil step; registering them here makes `enclave compress distil` and the
``step: distil`` recipe entry (``compress.registry``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from compress.registry import register
from compress.settings import Step, TrainingSplit, not_heldout, not_test


@register(
    "distil",
    module="compress.distil.run",
    order=30,
    help="knowledge distillation from a teacher (default: the input's parent)",
)
class DistilSettings(Step):
    """Knowledge distillation from a teacher into the student (the step's input, or a shallower copy)."""

    step: Literal["distil"] = "distil"
    teacher: str | None = None
    """The teacher model or artifact; empty: the input's parent artifact (e.g. the model before pruning)."""
    student_layers: int | None = Field(None, ge=1)
    """Make the student from this many evenly spaced layers of the input; empty keeps all layers."""
    data: list[str] = ["builtin:clinical_legal", "builtin:psf_license"]
    """Training text: data sets (JSONL/CSV, of which only `split` is read), text files (read whole) or
    builtin:NAME; never the held-out text."""
    split: TrainingSplit = "train"
    """The split of the data sets read; the test split, which the report scores, cannot be chosen."""
    steps: int = Field(40, ge=1)
    """Optimizer steps."""
    batch_size: int = Field(8, ge=1)
    """Sequences per step."""
    seq_len: int = Field(128, ge=16)
    """Tokens per sequence."""
    lr: float = Field(5e-5, gt=0.0)
    """AdamW learning rate (constant after 10% warmup)."""
    temperature: float = Field(2.0, gt=0.0)
    """Softmax temperature of the soft targets."""
    alpha: float = Field(0.7, ge=0.0, le=1.0)
    """Weight of the KL term; 1 - alpha weighs the cross-entropy on the data."""
    seed: int = 0
    """Seed for the data order."""

    _sources = field_validator("data")(not_heldout)
    _split = field_validator("split", mode="before")(not_test)

    def training_sources(self) -> tuple[str, list[str]]:
        """Distillation fits the student to ``data``."""
        return "data", list(self.data)
