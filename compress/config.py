"""Typed settings of a recipe: the chain of steps (each method's settings, from the registry) and
how every artifact is measured."""

from __future__ import annotations

from typing import Annotated, Union

from pydantic import Field, model_validator

from compress import registry
from enclave.config import StrictConfig
from enclave.texts import HELDOUT, text_file

# One entry per registered method, told apart by its `step` key.
StepSettings = Annotated[Union[tuple(m.settings for m in registry.methods())], Field(discriminator="step")]  # noqa: UP007


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
    """Prefix of the artifact names; artifacts go to $ENCLAVE_HOME/artifacts/NAME-STEP
    (exports: NAME-onnx, NAME-vllm) unless output_dir is set."""
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
            raise ValueError(
                f"two steps would write {', '.join(f'{self.name}-{n}' for n in twice)}; "
                "give them different `suffix` values"
            )
        return self

    @model_validator(mode="after")
    def _heldout_is_not_training_text(self):
        heldout = text_file(self.eval.heldout)  # a data set as held-out text is its test split, never trained on
        bad = [
            f"steps.{i}.{key}"
            for i, step in enumerate(self.steps)
            for key, sources in [training_sources(step)]
            if heldout is not None and heldout in map(text_file, sources)
        ]
        if bad:
            raise ValueError(
                f"{', '.join(bad)} include(s) eval.heldout ({self.eval.heldout}), the text every artifact is "
                "scored on; calibrate and distil on other text, or measure on another eval.heldout"
            )
        return self


def training_sources(step) -> tuple[str, list[str]]:
    """The setting that names a step's training text and its sources (none for merge and export)."""
    return step.training_sources()


def artifact_suffixes(steps: list) -> list[str]:
    """The suffix of each step's artifact: its own ``suffix``, else the step or export format
    (merge, quantize, onnx, vllm), numbered by position when more than one step without a
    ``suffix`` would take it."""
    kinds = [s.default_suffix() for s in steps]
    unnamed = [kind for s, kind in zip(steps, kinds) if not s.suffix]
    return [
        s.suffix or (kind if unnamed.count(kind) == 1 else f"{kind}{i + 1}")
        for i, (s, kind) in enumerate(zip(steps, kinds))
    ]
