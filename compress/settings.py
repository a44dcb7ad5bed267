"""What the settings of every compression method share: the artifact suffix, the calibration text,
and the rule that no method fits to the text the report scores.

Each method's own settings class sits next to its code (``compress/<method>/config.py``) and
registers there (``compress.registry``).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from enclave.config import StrictConfig
from enclave.texts import HELDOUT

TrainingSplit = Literal["train", "validation"]


def not_heldout(sources: str | list[str]) -> str | list[str]:
    """Refuse the held-out text as training text: every artifact's perplexity is measured on it."""
    if HELDOUT in ([sources] if isinstance(sources, str) else sources):
        raise ValueError(
            f"{HELDOUT} is the held-out text every artifact is scored on; fitting to it would flatter the "
            "scores. Use builtin:legal_texts, builtin:psf_license, a data set or your own text"
        )
    return sources


def not_test(split):
    """Refuse the test split as training text: it is what the report scores (``enclave eval``)."""
    if split == "test":
        raise ValueError(
            "the test split is what `enclave compress report` scores; calibrating or distilling on it "
            "would grade the model on its own training text. Use train (the default) or validation"
        )
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

    def default_suffix(self) -> str:
        """The artifact's suffix when ``suffix`` is not set (the step's name)."""
        return self.step

    def training_sources(self) -> tuple[str, list[str]]:
        """The setting that names the text this step fits to, and its sources (calibration by default)."""
        calibration = getattr(self, "calibration", None)
        source = calibration.source if calibration is not None else []
        return "calibration.source", [source] if isinstance(source, str) else source
