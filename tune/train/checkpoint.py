"""Resumable checkpoints: adapter weights, optimizer, scheduler, RNG states and data position.

Written atomically (temporary directory, then rename), so a kill -9 leaves the previous
checkpoint intact. Only files this run wrote are read back, with ``weights_only=True``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from enclave.atomic import TMP_MARK, atomic_dir


def save_weights(params: dict[str, torch.nn.Parameter], path: Path) -> None:
    """The trainable tensors as one safetensors file."""
    save_file({n: p.detach().contiguous() for n, p in params.items()}, path)


def load_weights(params: dict[str, torch.nn.Parameter], path: Path) -> None:
    """Copy a file written by ``save_weights`` into the live parameters."""
    weights = load_file(path)
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(weights[name])


def save(
    run_dir: Path,
    step: int,
    params: dict[str, torch.nn.Parameter],
    optimizer,
    scheduler,
    state: dict,
    keep: int,
    rank: int = 0,
) -> None:
    """Write ``checkpoints/step-N``; rank 0 writes weights and state, every rank its RNG."""
    final = run_dir / "checkpoints" / f"step-{step:07d}"
    if rank == 0:
        with atomic_dir(final, overwrite=True) as tmp:
            save_weights(params, tmp / "adapter.safetensors")
            torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, tmp / "optimizer.pt")
            (tmp / "state.json").write_text(json.dumps(state))
            _save_rng(tmp / "rng-rank0.pt")
        _prune(run_dir / "checkpoints", keep)
    else:
        _save_rng(final.parent / f".rng-rank{rank}-step-{step:07d}.pt")


def _save_rng(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # Dropout is the only consumer of randomness during training; data order is seeded per epoch.
    torch.save({"torch": torch.get_rng_state()}, path)


def _prune(root: Path, keep: int) -> None:
    done = sorted(p for p in root.glob("step-*") if TMP_MARK not in p.name)
    for old in done[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def latest(run_dir: Path) -> Path | None:
    """The newest complete checkpoint, or None."""
    done = sorted(
        p for p in (run_dir / "checkpoints").glob("step-*") if TMP_MARK not in p.name and (p / "state.json").is_file()
    )
    return done[-1] if done else None


def load(path: Path, params: dict[str, torch.nn.Parameter], optimizer, scheduler, rank: int = 0) -> dict:
    """Restore a checkpoint into the live objects; returns the loop state."""
    load_weights(params, path / "adapter.safetensors")
    opt = torch.load(path / "optimizer.pt", weights_only=True)
    optimizer.load_state_dict(opt["optimizer"])
    scheduler.load_state_dict(opt["scheduler"])
    rng_path = path / "rng-rank0.pt" if rank == 0 else path.parent / f".rng-rank{rank}-{path.name}.pt"
    rng = torch.load(rng_path, weights_only=True)
    torch.set_rng_state(rng["torch"])
    return json.loads((path / "state.json").read_text())
