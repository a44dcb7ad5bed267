"""The distil step: train the student on the teacher's soft targets, keep pruned weights at zero,
and record how much of the lost held-out perplexity it recovers."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from compress.distil.config import DistilSettings
from compress.distil.loss import distillation_loss
from compress.io import lineage, open_model, save_checkpoint
from compress.text import TextBatches, perplexity, training_ids
from enclave.errors import EnclaveError
from enclave.manifest import create_artifact
from enclave.store import ResolvedModel, find_by_digest
from enclave.texts import HELDOUT

log = logging.getLogger(__name__)


def teacher_ref(resolved: ResolvedModel, settings: DistilSettings) -> str:
    """The configured teacher, else the input's parent artifact, found by its digest."""
    if settings.teacher:
        return settings.teacher
    parents = resolved.manifest.parents if resolved.manifest else []
    found = find_by_digest(parents[0].digest, resolved.path) if parents else None
    if found is None:
        raise EnclaveError(
            f"distil: no teacher set, and the parent of {resolved.path} was not found",
            fix="set teacher= to the model before pruning (a store name or artifact path)",
        )
    return str(found)


def keep_layers(model, n: int) -> list[int]:
    """Shrink the model to ``n`` evenly spaced decoder layers (first and last kept); return their indices."""
    layers = model.model.layers
    if n >= len(layers):
        raise EnclaveError(f"distil: student_layers={n} is not fewer than the model's {len(layers)} layers")
    idx = sorted({int(round(i)) for i in np.linspace(0, len(layers) - 1, n)})
    model.model.layers = torch.nn.ModuleList([layers[i] for i in idx])
    for new, layer in enumerate(model.model.layers):
        layer.self_attn.layer_idx = new  # the KV cache is indexed by position in the stack
    model.config.num_hidden_layers = len(idx)
    if getattr(model.config, "layer_types", None):
        model.config.layer_types = [model.config.layer_types[i] for i in idx]
    return idx


def sparsity_masks(model) -> dict[str, torch.Tensor]:
    """Masks of the weights pruning set to zero (matrices at least 10% zeros), to keep them zero."""
    masks = {}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and (module.weight == 0).float().mean() >= 0.1:
            masks[name] = module.weight != 0
    return masks


def token_chunks(tokenizer, sources: list[str], seq_len: int, batch_size: int, split: str = "train") -> TextBatches:
    """The training text cut into sequences of ``seq_len + 1`` tokens (inputs and next-token labels).

    Args:
        tokenizer: the student's tokenizer.
        sources: data sets (only ``split`` is read) and text files (read whole), joined in order.
        seq_len: input tokens per sequence (each chunk holds one more, for the last label).
        batch_size: sequences per training step; there must be at least this many chunks.
        split: the data set split read.

    Returns:
        The chunks, ids shape (N, seq_len + 1) (leftover tokens dropped), and what each source gave.

    Raises:
        EnclaveError: fewer tokens than one batch.
    """
    ids, read = training_ids(tokenizer, sources, split, "data")
    n = len(ids) // (seq_len + 1)
    if n < batch_size:
        raise EnclaveError(
            f"distil: the data ({split} split of data sets) has {len(ids):,} tokens, fewer than one batch of "
            f"{batch_size} x {seq_len + 1}",
            fix="add data sources or lower batch_size / seq_len",
        )
    return TextBatches(ids[: n * (seq_len + 1)].reshape(n, seq_len + 1), read)


def run(source: str, settings: DistilSettings, out: Path, name: str, overwrite: bool = False) -> Path:
    """Distil into the student; the artifact records teacher, before and after perplexity.

    The manifest's ``settings.read`` lists the sources read, their splits, records and tokens.

    Args:
        source: the student: a store name or a checkpoint or artifact path (usually a pruned artifact).
        settings: the distil settings (teacher, student_layers, data, steps, learning rate, loss weights).
        out: the artifact directory to create (kind ``distilled``).
        name: the artifact's name, recorded in its manifest.
        overwrite: replace an existing artifact at ``out``.

    Returns:
        ``out``, the written artifact.

    Raises:
        EnclaveError: the student or teacher is unknown or fails verification, no teacher is set and the
            student's parent artifact is not found, the vocabularies differ, ``student_layers`` is not fewer
            than the model's layers, the data has invalid records (DataError) or fewer tokens than one batch,
            or ``out`` exists and ``overwrite`` is not set.
    """
    resolved, student, tokenizer = open_model(source)
    t_resolved, teacher, _ = open_model(teacher_ref(resolved, settings))
    if teacher.config.vocab_size != student.config.vocab_size:
        raise EnclaveError(
            "distil: teacher and student have different vocabularies", fix="use a teacher of the same model family"
        )
    kept = keep_layers(student, settings.student_layers) if settings.student_layers else None
    masks = sparsity_masks(student)
    chunks = token_chunks(tokenizer, settings.data, settings.seq_len, settings.batch_size, settings.split)
    ppl = {"teacher": perplexity(teacher, tokenizer, HELDOUT), "before": perplexity(student, tokenizer, HELDOUT)}
    history = _train(student, teacher, chunks.ids, masks, settings)
    ppl["after"] = perplexity(student, tokenizer, HELDOUT)
    lost = ppl["before"] - ppl["teacher"]
    recovered = (ppl["before"] - ppl["after"]) / lost if lost > 0 else None
    log.info(
        "held-out perplexity: teacher %.2f, student before %.2f, after %.2f (recovered %s of the loss)",
        ppl["teacher"],
        ppl["before"],
        ppl["after"],
        f"{recovered:.0%}" if recovered is not None else "n/a",
    )
    parents = lineage(resolved, "student") + lineage(t_resolved, "teacher")
    recorded = {**settings.model_dump(mode="json"), "read": chunks.manifest()}
    with create_artifact(out, "distilled", name, parents=parents, settings=recorded, overwrite=overwrite) as draft:
        save_checkpoint(student, tokenizer, draft.path)
        draft.metrics.update(
            perplexity_teacher=ppl["teacher"],
            perplexity_before=ppl["before"],
            perplexity_after=ppl["after"],
            recovered_share=recovered,
            kept_layers=kept,
            masked_matrices=len(masks),
            history=history,
        )
    return out


def _train(student, teacher, chunks: torch.Tensor, masks: dict, settings: DistilSettings) -> list[dict]:
    torch.manual_seed(settings.seed)
    order = np.random.default_rng(settings.seed).permutation(len(chunks))
    params = [p for p in student.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=settings.lr, weight_decay=0.0)
    warmup = max(1, settings.steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup))
    modules = dict(student.named_modules())
    student.train()
    teacher.eval()
    history = []
    for step in tqdm(range(settings.steps), desc="distil", unit="step"):
        pick = [order[(step * settings.batch_size + i) % len(order)] for i in range(settings.batch_size)]
        batch = chunks[pick]  # (B, seq_len + 1)
        inputs, labels = batch[:, :-1], batch[:, 1:]
        with torch.no_grad():
            t_logits = teacher(input_ids=inputs).logits
        loss, kl, ce = distillation_loss(
            student(input_ids=inputs).logits, t_logits, labels, settings.temperature, settings.alpha
        )
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        with torch.no_grad():
            for mname, mask in masks.items():
                modules[mname].weight.mul_(mask)
        history.append({"step": step + 1, "loss": loss.item(), "kl": kl, "ce": ce})
    student.eval()
    return history
