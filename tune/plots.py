"""PNG plots: loss curves (a person would rather look than read)."""

from __future__ import annotations

from pathlib import Path


def loss_curve(history: list[dict], evals: list[dict], path: Path, title: str) -> Path:
    """Train loss per step and validation loss per evaluation, on one chart."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    ax.plot([h["step"] for h in history], [h["loss"] for h in history], label="train (answer tokens)", alpha=0.8)
    if evals:
        ax.plot([e["step"] for e in evals], [e["val_loss"] for e in evals], "o-", label="validation")
        best = min(evals, key=lambda e: e["val_loss"])
        ax.axvline(best["step"], color="grey", ls="--", lw=1, label=f"best (step {best['step']})")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
