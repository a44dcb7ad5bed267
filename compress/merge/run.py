"""Merge a LoRA adapter into its base (PEFT ``merge_and_unload``) and check the result."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from compress.io import SAMPLE_PROMPTS, lineage, open_model, save_checkpoint
from compress.merge.config import MergeSettings
from enclave.manifest import create_artifact, read_manifest
from enclave.store import resolve_adapter

log = logging.getLogger(__name__)


@torch.no_grad()
def sample_logits(model, tokenizer) -> list[torch.Tensor]:
    """The model's logits for each of ``SAMPLE_PROMPTS``, one (1, tokens, vocab) tensor per prompt."""
    return [model(input_ids=tokenizer(p, return_tensors="pt")["input_ids"]).logits for p in SAMPLE_PROMPTS]


def run(source: str, settings: MergeSettings, out: Path, name: str, overwrite: bool = False) -> Path:
    """Write a merged checkpoint; records the largest logit difference to the unmerged model.

    Args:
        source: the base model: a store name or a checkpoint or artifact path.
        settings: the merge settings; ``settings.adapter`` is the adapter to merge (a path or a stored name).
        out: the artifact directory to create (kind ``merged``).
        name: the artifact's name, recorded in its manifest.
        overwrite: replace an existing artifact at ``out``.

    Returns:
        ``out``, the written artifact.

    Raises:
        EnclaveError: the adapter fails verification or belongs to another base (both digests named);
            also: the base or the adapter is not found or fails verification, or ``out`` exists and
            ``overwrite`` is not set.
    """
    resolved, model, tokenizer = open_model(source, settings.adapter)
    adapter = read_manifest(resolve_adapter(settings.adapter))
    before = sample_logits(model, tokenizer)
    merged = model.merge_and_unload()
    after = sample_logits(merged, tokenizer)
    diff = max((a - b).abs().max().item() for a, b in zip(before, after))
    same_argmax = all(torch.equal(a.argmax(-1), b.argmax(-1)) for a, b in zip(before, after))
    log.info("merged %s: largest logit difference %.2e, same greedy tokens: %s", adapter.name, diff, same_argmax)
    parents = lineage(resolved, "base") + [adapter.as_parent("adapter")]
    with create_artifact(
        out, "merged", name, parents=parents, settings=settings.model_dump(mode="json"), overwrite=overwrite
    ) as draft:
        save_checkpoint(merged, tokenizer, draft.path)
        draft.metrics.update(max_logit_diff=diff, same_argmax=same_argmax, sample_prompts=len(SAMPLE_PROMPTS))
    return out
