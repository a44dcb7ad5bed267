"""The tune recipe: one typed config whose fields are the YAML keys and the CLI overrides."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from enclave.config import StrictConfig
from enclave.texts import HELDOUT, builtin_texts, text_file


class DataConfig(StrictConfig):
    """Where the examples come from and how they are cleaned."""

    path: str = "builtin:clinical_legal"
    """A JSONL or CSV file, a directory of them, or builtin:NAME for a shipped data set."""
    columns: dict[str, str] = {}
    """CSV only: map our fields (instruction, input, output, group, split) to your column names."""
    system_prompt: str | None = None
    """A system message put before every example (default: the chat template's own)."""
    max_length: int = Field(256, ge=8)
    """Longest example in tokens (prompt + answer); longer ones are dropped and reported."""
    near_duplicate_threshold: float = Field(0.8, gt=0.0, le=1.0)
    """Jaccard similarity (word 3-gram MinHash) above which two records are near duplicates."""
    split_ratios: tuple[float, float, float] = (0.8, 0.1, 0.1)
    """Train/validation/test shares when the data names no splits (by content hash)."""

    @field_validator("split_ratios")
    @classmethod
    def _sum_to_one(cls, v):
        if abs(sum(v) - 1.0) > 1e-6 or min(v) < 0 or v[0] == 0:
            raise ValueError("must be three non-negative shares summing to 1, train above 0")
        return v


class LoraSettings(StrictConfig):
    """The adapter: LoRA (PEFT) or full fine-tuning."""

    method: Literal["lora", "full"] = "lora"
    """lora trains low-rank adapters; full trains every weight (small models only)."""
    r: int = Field(8, ge=1, le=1024)
    """LoRA rank."""
    alpha: float = Field(16.0, gt=0)
    """LoRA scaling numerator (the update is scaled by alpha / r)."""
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    """Dropout on the LoRA input."""
    target_modules: list[str] = ["q_proj", "v_proj"]
    """Module names (the last part of the name) that get adapters, e.g. q_proj, v_proj, gate_proj."""
    modules_to_save: list[str] = []
    """Modules trained fully and saved with the adapter, e.g. lm_head."""


class UnfreezeStage(StrictConfig):
    """One stage of progressive unfreezing."""

    layers: str = "all"
    """Which layers' adapters train: all, top:N (the last N layers) or a range a-b (inclusive)."""
    steps: int | None = Field(None, ge=1)
    """How many optimizer steps the stage lasts; the last stage may leave it empty (until the end)."""


class TrainSettings(StrictConfig):
    """The optimisation."""

    optimizer: Literal["adamw", "sgd", "rmsprop"] = "adamw"
    """adamw, sgd (with momentum) or rmsprop."""
    lr: float = Field(2e-4, gt=0.0)
    """Peak learning rate."""
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    """Momentum for sgd and rmsprop."""
    weight_decay: float = Field(0.0, ge=0.0)
    """Decoupled weight decay (adamw) or L2 penalty (sgd, rmsprop)."""
    scheduler: Literal["linear", "cosine", "constant"] = "cosine"
    """Decay after warmup: linear or cosine to zero, or constant."""
    warmup_steps: int = Field(0, ge=0)
    """Linear warmup steps from 0 to lr."""
    batch_size: int = Field(8, ge=1)
    """Examples per optimizer step (the global batch, over all ranks and accumulation steps)."""
    grad_accum: int = Field(1, ge=1)
    """Split each batch into this many micro-batches (same result, less memory)."""
    max_grad_norm: float | None = Field(1.0, gt=0.0)
    """Clip the gradient norm to this; empty turns clipping off."""
    epochs: float = Field(3.0, gt=0.0)
    """Passes over the training split (ignored when max_steps is set)."""
    max_steps: int | None = Field(None, ge=1)
    """Stop after this many optimizer steps."""
    seed: int = 0
    """Seed for initialisation, data order and dropout."""
    group_by_length: bool = True
    """Batch examples of similar length together (less padding, faster)."""
    eval_every: int = Field(20, ge=1)
    """Validation loss every N steps (and at the end)."""
    patience: int | None = Field(3, ge=1)
    """Early stopping: stop after this many evaluations without improvement; empty turns it off."""
    min_delta: float = Field(0.0, ge=0.0)
    """Smallest validation loss decrease that counts as an improvement."""
    checkpoint_every: int = Field(25, ge=1)
    """Write a resumable checkpoint every N steps."""
    keep_checkpoints: int = Field(2, ge=1)
    """How many recent checkpoints to keep."""
    unfreeze: list[UnfreezeStage] = []
    """Progressive unfreezing stages, in order; empty trains every adapter from the start."""

    @model_validator(mode="after")
    def _check(self):
        if self.batch_size % self.grad_accum:
            raise ValueError(f"batch_size {self.batch_size} must be a multiple of grad_accum {self.grad_accum}")
        if any(s.steps is None for s in self.unfreeze[:-1]):
            raise ValueError("unfreeze: every stage but the last needs steps")
        return self


class EvalSettings(StrictConfig):
    """The evaluation at the end of a run (and of `enclave eval`)."""

    max_new_tokens: int = Field(48, ge=1, le=2048)
    """Longest generated answer."""
    batch_size: int = Field(16, ge=1)
    """Prompts generated together."""
    max_examples: int | None = Field(None, ge=1)
    """Evaluate only the first N test examples (quick checks)."""
    fairness_gap_threshold: float = Field(10.0, ge=0.0)
    """Warn when a metric differs between groups by more than this many points (metrics are 0-100)."""
    compare_base: bool = True
    """Also evaluate the base model on the same test split, for a side-by-side table."""
    general_text: str | None = HELDOUT
    """Held-out general text (a text file or builtin:NAME of the shipped texts) whose perplexity is
    measured before and after tuning, to show forgetting; null to skip."""
    general_max_tokens: int = Field(2048, ge=64)
    """Score at most this many tokens of general_text."""
    forgetting_threshold: float = Field(1.25, gt=1.0)
    """Warn when the tuned model's general-text perplexity exceeds the base model's by more than this
    factor (1.25: a quarter higher)."""

    @field_validator("general_text")
    @classmethod
    def _general_text_exists(cls, value: str | None) -> str | None:
        if value is not None and text_file(value) is None:
            raise ValueError(
                f"{value!r} is not a text file or a shipped text (builtin: {', '.join(builtin_texts())}); "
                "give a .txt path, or null to skip the forgetting check"
            )
        return value


class PreferenceSettings(StrictConfig):
    """Preference tuning on the data's preference records (prompt, chosen, rejected: rated pairs)."""

    method: Literal["none", "dpo"] = "none"
    """dpo: Direct Preference Optimization with TRL's DPOTrainer on the training split's
    preference records; none: they train like chat records, on their chosen answers."""
    after_sft: bool = True
    """dpo: first the usual training on the other records (the corrections), then DPO from that
    adapter (the reference model); false: DPO instead of it."""
    beta: float = Field(0.1, gt=0.0)
    """DPO's beta: how far the adapter may move from the reference (higher: less far)."""
    lr: float = Field(5e-5, gt=0.0)
    """DPO's learning rate (constant)."""
    steps: int = Field(20, ge=1)
    """DPO optimizer steps."""
    batch_size: int = Field(4, ge=1)
    """Pairs per DPO step."""


class RehearsalSettings(StrictConfig):
    """Continual tuning (init_adapter): part of the earlier adapter's training data, replayed."""

    data: str | None = None
    """The earlier training data (default: the data path in init_adapter's manifest)."""
    share: float = Field(0.3, ge=0.0, le=1.0)
    """Share of its training split replayed beside the new data (0: none). Its validation and
    test splits are never trained on: the test split is the frozen one forgetting is measured on."""


class TuneConfig(StrictConfig):
    """A tuning recipe."""

    name: str = Field("adapter", pattern=r"^[a-z0-9][a-z0-9._-]{0,99}$")
    """Adapter name; the artifact goes to $ENCLAVE_HOME/adapters/NAME unless output is set."""
    base_model: str = "smollm2-135m-instruct"
    """Base model: a store name or a checkpoint path."""
    output: str | None = None
    """Artifact directory to write (default $ENCLAVE_HOME/adapters/NAME)."""
    overwrite: bool = False
    """Replace an existing artifact at the output path."""
    data: DataConfig = DataConfig()
    """The data."""
    lora: LoraSettings = LoraSettings()
    """The adapter."""
    train: TrainSettings = TrainSettings()
    """The optimisation."""
    eval: EvalSettings = EvalSettings()
    """The final evaluation."""
    init_adapter: str | None = None
    """Continue from this adapter (a name in $ENCLAVE_HOME/adapters or a path) on the new data: its
    weights and LoRA settings are the start, its test split the frozen set forgetting is measured on."""
    rehearsal: RehearsalSettings = RehearsalSettings()
    """With init_adapter: how much of its training data is replayed."""
    preference: PreferenceSettings = PreferenceSettings()
    """Preference tuning (DPO) on rated pairs."""
