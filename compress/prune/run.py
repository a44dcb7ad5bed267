"""The prune step: calibrate, prune layer by layer, record sparsity per layer, write the artifact."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from compress.io import lineage, open_model, save_checkpoint
from compress.layerwise import run_layerwise
from compress.prune import magnitude, sparsegpt, wanda
from compress.prune.config import PruneSettings
from compress.prune.masks import parse_pattern
from compress.text import calibration_batches
from enclave.errors import EnclaveError
from enclave.manifest import create_artifact

log = logging.getLogger(__name__)


def prunable(model, skip: list[str]) -> dict[str, torch.nn.Linear]:
    """The model's linear layers by module name, except those whose last name part is in ``skip``."""
    return {
        n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n.rsplit(".", 1)[-1] not in skip
    }


def check_pattern(model, settings: PruneSettings) -> tuple[int, int] | None:
    """Parse ``settings.pattern`` and check that it fits every prunable layer.

    Args:
        model: the loaded model.
        settings: the prune settings (``pattern`` and ``skip`` are read).

    Returns:
        (N, M) for an N:M pattern, or None for unstructured pruning.

    Raises:
        EnclaveError: N is not below M, or M does not divide a prunable layer's input width (the widths named).
    """
    nm = parse_pattern(settings.pattern)
    if nm:
        bad = sorted({m.in_features for m in prunable(model, settings.skip).values() if m.in_features % nm[1]})
        if bad or nm[0] >= nm[1]:
            raise EnclaveError(
                f"pattern {settings.pattern}: N must be below M and M must divide every input width (not: {bad})",
                fix="use 2:4 or 4:8, or unstructured",
            )
    return nm


def run(source: str, settings: PruneSettings, out: Path, name: str, overwrite: bool = False) -> Path:
    """Prune every linear layer except ``settings.skip`` and write a dense checkpoint with zeros.

    The manifest's ``settings.calibration.read`` lists the sources read, their splits, records and tokens.

    Args:
        source: the model to prune: a store name or a checkpoint or artifact path.
        settings: the prune settings (algorithm, sparsity, pattern, skip, calibration).
        out: the artifact directory to create (kind ``pruned``).
        name: the artifact's name, recorded in its manifest.
        overwrite: replace an existing artifact at ``out``.

    Returns:
        ``out``, the written artifact.

    Raises:
        EnclaveError: the source is not found or fails verification, the pattern does not fit the model,
            the calibration text (wanda and sparsegpt) is too short or has invalid records (DataError), or
            ``out`` exists and ``overwrite`` is not set.
    """
    resolved, model, tokenizer = open_model(source)
    nm = check_pattern(model, settings)
    recorded = settings.model_dump(mode="json")
    recorded["calibration"]["read"] = None  # magnitude pruning reads no text
    if settings.algorithm == "magnitude":
        with torch.no_grad():
            for module in prunable(model, settings.skip).values():
                module.weight.copy_(magnitude.prune(module.weight, settings.sparsity, nm))
    else:
        cal = settings.calibration
        batches = calibration_batches(tokenizer, cal.source, cal.samples, cal.seq_len, cal.split)
        recorded["calibration"]["read"] = batches.manifest()

        def prune_layer(_index, linears, stats):
            for n, m in linears.items():
                if settings.algorithm == "wanda":
                    new = wanda.prune(m.weight, stats[n].sq_sum, settings.sparsity, nm)
                else:
                    new = sparsegpt.prune(
                        m.weight,
                        stats[n].hessian_matrix(),
                        settings.sparsity,
                        nm,
                        settings.blocksize,
                        settings.dampening,
                    )
                m.weight.copy_(new)

        hessian = settings.algorithm == "sparsegpt"
        run_layerwise(model, batches.ids, settings.skip, hessian, prune_layer, f"prune ({settings.algorithm})")
    layers = prunable(model, settings.skip)
    per_layer = {n: float((m.weight == 0).float().mean()) for n, m in layers.items()}
    zeros = sum(int((m.weight == 0).sum()) for m in layers.values())
    total = sum(m.weight.numel() for m in layers.values())
    log.info("pruned %s of %s prunable weights (%.1f%%)", f"{zeros:,}", f"{total:,}", 100 * zeros / total)
    with create_artifact(
        out, "pruned", name, parents=lineage(resolved, "source"), settings=recorded, overwrite=overwrite
    ) as draft:
        save_checkpoint(model, tokenizer, draft.path)
        draft.metrics.update(
            sparsity=zeros / total, pruned_weights=zeros, prunable_weights=total, sparsity_per_layer=per_layer
        )
    return out
