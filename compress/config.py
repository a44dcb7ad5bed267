"""Typed settings for each compress step and for a recipe that chains them."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from enclave.config import StrictConfig
from enclave.texts import HELDOUT, text_file

TrainingSplit = Literal["train", "validation"]


def not_heldout(sources: str | list[str]) -> str | list[str]:
    """Refuse the held-out text as training text: every artifact's perplexity is measured on it."""
    if HELDOUT in ([sources] if isinstance(sources, str) else sources):
        raise ValueError(f"{HELDOUT} is the held-out text every artifact is scored on; fitting to it would flatter the "
                         "scores. Use builtin:legal_texts, builtin:psf_license, a data set or your own text")  # fmt: skip
    return sources


def not_test(split):
    """Refuse the test split as training text: it is what the report scores (``enclave eval``)."""
    if split == "test":
        raise ValueError("the test split is what `enclave compress report` scores; calibrating or distilling on it "
                         "would grade the model on its own training text. Use train (the default) or validation")  # fmt: skip
    return split


class Calibration(StrictConfig):
    """Text the data-aware methods (Wanda, SparseGPT, GPTQ) look at; never text the report scores."""

    source: str | list[str] = ["builtin:clinical_legal", "builtin:psf_license"]
    """A data set (JSONL/CSV file or directory, or builtin:NAME), of which only `split` is read, or a text
    file, read whole; or a list of them, joined in order (builtin: clinical_legal, psf_license, legal_texts).
    The demo data's train split alone is about 6,400 SmolLM2 tokens, hence the licence text beside it."""
    split: TrainingSplit = "train"
    """The split of a data set read (records without a split field are placed as tune places them); the
    test split, which the report scores, cannot be chosen."""
    samples: int = Field(32, ge=1)
    """How many sequences of seq_len tokens."""
    seq_len: int = Field(256, ge=16)
    """Tokens per calibration sequence."""

    _sources = field_validator("source")(not_heldout)
    _split = field_validator("split", mode="before")(not_test)


class Step(StrictConfig):
    """What every step has: the suffix of the artifact it writes."""

    suffix: str | None = Field(None, pattern=r"^[a-z0-9][a-z0-9._-]{0,40}$")
    """The artifact is named RECIPE-SUFFIX (default: the step, or the export format, e.g.
    clinical-legal-quantize, clinical-legal-onnx; numbered when a recipe repeats one)."""


class MergeSettings(Step):
    """Fold a LoRA adapter into its base (PEFT merge_and_unload)."""

    step: Literal["merge"] = "merge"
    adapter: str
    """The adapter (from `enclave tune`) to merge: a path, or a name in $ENCLAVE_HOME/adapters."""


class PruneSettings(Step):
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


class QuantizeSettings(Step):
    """Weight-only quantization with GPTQModel: GPTQ (with calibration) or round-to-nearest."""

    step: Literal["quantize"] = "quantize"
    method: Literal["gptq", "rtn"] = "gptq"
    """gptq (second-order error compensation, needs calibration) or rtn (round-to-nearest, the baseline)."""
    bits: Literal[2, 3, 4, 8] = 4
    """Bits per weight."""
    group_size: int = Field(64, ge=-1)
    """Weights sharing one scale along the input dimension; must divide every layer's input width
    (SmolLM2: 576 and 1536, so 32 or 64, not 128); -1 is one scale per output row."""
    sym: bool = True
    """Symmetric quantization (no zero point); vLLM's CPU and Marlin kernels want true."""
    act_order: bool = False
    """Quantize columns in order of decreasing activation size (GPTQ desc_act); slower kernels."""
    group_aware: bool = True
    """GPTQModel's group-aware reordering (act order without its runtime cost); off with act_order."""
    damping: float = Field(0.05, gt=0.0, lt=1.0)
    """Share of the mean Hessian diagonal added for numerical stability (GPTQ damp_percent)."""
    clip_search: float = Field(2.4, ge=0.0)
    """GPTQ: search each group's scale for the least error in this norm (the reference GPTQ code's
    mse option; 2.4 there); 0 uses plain min/max scales."""
    calibration: Calibration = Calibration(source=["builtin:clinical_legal", "builtin:psf_license", "builtin:legal_texts"],
                                           samples=96)  # fmt: skip
    """Calibration text (not used by rtn): by default the train split of the tuning data and legal prose,
    96 x 256 tokens (of about 27,000 SmolLM2 tokens there are)."""
    batch_size: int = Field(4, ge=1)
    """Calibration sequences per forward pass."""


class ExportSettings(Step):
    """Write a serving artifact: ONNX with KV cache (ONNX Runtime GenAI) or a vLLM directory."""

    step: Literal["export"] = "export"
    format: Literal["onnx", "vllm"] = "onnx"
    """onnx (ONNX Runtime, runs on any CPU) or vllm (HF layout with quantization_config, adapters beside it)."""
    precision: Literal["fp32", "int8", "int4"] = "fp32"
    """ONNX weights: fp32, or int8/int4 MatMulNBits (weight-only, activations quantized on the fly
    at accuracy_level 4). A GPTQ input keeps its own 4-bit weights and needs int4."""
    block_size: Literal[16, 32, 64, 128, 256] = 32
    """ONNX int8/int4: weights sharing one scale (ignored for a GPTQ input, which keeps its group size)."""
    int4_method: Literal["k_quant", "rtn"] = "k_quant"
    """ONNX int4: how the builder quantizes weights not already quantized by GPTQ (k_quant: llama.cpp's
    k-quants; rtn: round-to-nearest)."""
    lm_head_int8: bool = True
    """ONNX int4: keep the output layer, the largest and most sensitive matrix, at 8 bits
    (on the demo model: held-out perplexity 49.1 with it at 4 bits, 43.0 at 8, for 15 MB)."""
    accuracy_level: Literal[0, 1, 2, 3, 4] = 4
    """ONNX int8/int4: compute type of MatMulNBits (4: int8 activations, fastest on VNNI CPUs; 0: unset)."""
    check_tokens: int = Field(32, ge=1)
    """Greedy tokens compared with PyTorch on each sample prompt (fp32 must match exactly)."""
    adapters: list[str] = []
    """vllm: LoRA adapters (paths or names in $ENCLAVE_HOME/adapters; repeat --adapters) copied beside the model; their base
    must be the exported model or one it was quantized or pruned from, not merged into."""
    vllm_python: str | None = None
    """vllm: a Python with vLLM installed, used to load the directory and generate (default:
    $ENCLAVE_VLLM_PYTHON, which `make` sets to .venv-vllm's; without one the check is skipped)."""


StepSettings = Annotated[MergeSettings | PruneSettings | DistilSettings | QuantizeSettings | ExportSettings, Field(discriminator="step")]


class EvalSettings(StrictConfig):
    """How every produced artifact is measured."""

    heldout: str = HELDOUT
    """Held-out text for perplexity: a text file or builtin:NAME, or a data set (its test split); no
    step may calibrate or distil on it."""
    max_tokens: int = Field(2048, ge=64)
    """Score at most this many tokens of it."""


class CompressRecipe(StrictConfig):
    """A chain of steps, each reading the previous artifact."""

    name: str = Field("compressed", pattern=r"^[a-z0-9][a-z0-9._-]{0,99}$")
    """Prefix of the artifact names; artifacts go to $ENCLAVE_HOME/artifacts/NAME-STEP (exports: NAME-onnx, NAME-vllm) unless output_dir is set."""
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

    @model_validator(mode="after")
    def _names_are_unique(self):
        names = artifact_suffixes(self.steps)
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"two steps would write {', '.join(f'{self.name}-{n}' for n in twice)}; give them different `suffix` values")
        return self

    @model_validator(mode="after")
    def _heldout_is_not_training_text(self):
        heldout = text_file(self.eval.heldout)  # a data set as held-out text is its test split, never trained on
        bad = [f"steps.{i}.{key}" for i, step in enumerate(self.steps) for key, sources in [training_sources(step)]
               if heldout is not None and heldout in map(text_file, sources)]  # fmt: skip
        if bad:
            raise ValueError(f"{', '.join(bad)} include(s) eval.heldout ({self.eval.heldout}), the text every artifact is "
                             "scored on; calibrate and distil on other text, or measure on another eval.heldout")  # fmt: skip
        return self


def training_sources(step) -> tuple[str, list[str]]:
    """The setting that names a step's training text and its sources (none for merge and export)."""
    if isinstance(step, DistilSettings):
        return "data", step.data
    source = step.calibration.source if isinstance(step, PruneSettings | QuantizeSettings) else []
    return "calibration.source", [source] if isinstance(source, str) else source


def artifact_suffixes(steps: list) -> list[str]:
    """The suffix of each step's artifact: its own ``suffix``, else the step or export format
    (merge, quantize, onnx, vllm), numbered by position when more than one step without a
    ``suffix`` would take it."""
    kinds = [s.format if s.step == "export" else s.step for s in steps]
    unnamed = [kind for s, kind in zip(steps, kinds) if not s.suffix]
    return [s.suffix or (kind if unnamed.count(kind) == 1 else f"{kind}{i + 1}") for i, (s, kind) in enumerate(zip(steps, kinds))]
