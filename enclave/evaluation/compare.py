"""Two comparisons between models' scores, defined once: forgetting (general-text perplexity
before and after tuning) and the share of a tuning gain an artifact keeps."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Forgetting:
    """General-text perplexity of the base model and of the tuned one, on the same held-out text."""

    text: str
    """The held-out general text (builtin:NAME or a path)."""
    before: float
    after: float
    threshold: float
    """The ratio after/before past which tuning is said to have forgotten general language."""

    @property
    def ratio(self) -> float:
        """Perplexity after tuning divided by perplexity before; above 1.0 the tuned model is worse."""
        return self.after / self.before

    def warning(self, label: str) -> str | None:
        """A sentence for the report when the ratio passes the threshold, else None."""
        if not self.ratio > self.threshold:
            return None
        return (
            f"{label}: general-text perplexity ({self.text}) went from {self.before:.1f} to {self.after:.1f} "
            f"({self.ratio:.2f}x, above the {self.threshold:g}x threshold): the model has lost general language "
            "while learning the task; fewer epochs, a lower lr or rank, or general text mixed into the data "
            "reduce it (eval.forgetting_threshold sets the threshold)"
        )

    def to_dict(self) -> dict:
        """The fields as a dict for JSON reports, with ``ratio`` added."""
        return {**asdict(self), "ratio": self.ratio}


def gain_kept(base: float | None, tuned: float | None, artifact: float | None) -> float | None:
    """The share of tuning's gain on a higher-is-better score that an artifact keeps:
    (artifact - base) / (tuned - base); 1.0 keeps it all, 0.0 is back to the base model.

    None when a score is missing or tuning gained nothing (no gain to keep).
    """
    if base is None or tuned is None or artifact is None or any(map(math.isnan, (base, tuned, artifact))):
        return None
    if tuned <= base:
        return None
    return (artifact - base) / (tuned - base)
