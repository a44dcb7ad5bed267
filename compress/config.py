"""Typed settings for each compress step and for a recipe that chains them."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from enclave.config import StrictConfig

HELDOUT = "builtin:heldout_apache2"


class Calibration(StrictConfig):
    """Text the data-aware methods (Wanda, SparseGPT) look at."""

    source: str = "builtin:clinical_legal"
    """A JSONL data set (instruction/output or messages), a .txt file, or builtin:NAME."""
    samples: int = Field(32, ge=1)
    """How many sequences of seq_len tokens."""
    seq_len: int = Field(256, ge=16)
    """Tokens per calibration sequence."""


class MergeSettings(StrictConfig):
    """Fold a LoRA adapter into its base (PEFT merge_and_unload)."""

    step: Literal["merge"] = "merge"
    adapter: str
    """The adapter (from `enclave tune`) to merge: a path, or a name in $ENCLAVE_HOME/adapters."""


class PruneSettings(StrictConfig):
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


class DistilSettings(StrictConfig):
    """Knowledge distillation from a teacher into the student (the step's input, or a shallower copy)."""

    step: Literal["distil"] = "distil"
    teacher: str | None = None
    """The teacher model or artifact; empty: the input's parent artifact (e.g. the model before pruning)."""
    student_layers: int | None = Field(None, ge=1)
    """Make the student from this many evenly spaced layers of the input; empty keeps all layers."""
    data: list[str] = ["builtin:clinical_legal", "builtin:psf_license"]
    """Training text: data sets (JSONL), .txt files or builtin:NAME (never the held-out text)."""
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


StepSettings = Annotated[MergeSettings | PruneSettings | DistilSettings, Field(discriminator="step")]


class EvalSettings(StrictConfig):
    """How every produced artifact is measured."""

    heldout: str = HELDOUT
    """Held-out text for perplexity: a .txt file or builtin:NAME."""
    max_tokens: int = Field(2048, ge=64)
    """Score at most this many tokens of it."""


class CompressRecipe(StrictConfig):
    """A chain of steps, each reading the previous artifact."""

    name: str = Field("compressed", pattern=r"^[a-z0-9][a-z0-9._-]{0,99}$")
    """Prefix of the artifact names; artifacts go to $ENCLAVE_HOME/artifacts/NAME-STEP unless output_dir is set."""
    model: str = "smollm2-135m-instruct"
    """The starting model: a store name or a checkpoint path."""
    output_dir: str | None = None
    """Directory for the artifacts (default $ENCLAVE_HOME/artifacts)."""
    overwrite: bool = False
    """Replace existing artifacts of the same names."""
    steps: list[StepSettings] = Field(min_length=1)
    """The steps, in order, e.g. [{step: merge, adapter: ...}, {step: prune, algorithm: wanda}]."""
    eval: EvalSettings = EvalSettings()
    """Measurement settings."""
