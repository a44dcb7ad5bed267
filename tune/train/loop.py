"""The training loop: read top to bottom. Early stopping keeps the best adapter; checkpoints
make a killed run resumable with the same result.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from enclave.atomic import atomic_dir
from tune.config import TrainSettings
from tune.data.tokenize import Example
from tune.train import checkpoint, distributed
from tune.train.batching import answer_token_count, collate, epoch_batches, shard
from tune.train.model import set_stage, stage_at, trainable
from tune.train.optim import build_optimizer, build_scheduler

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """What the loop produced: the step reached, losses and throughput."""

    steps: int
    best_step: int
    best_val_loss: float
    stopped_early: bool
    history: list[dict] = field(default_factory=list)
    evals: list[dict] = field(default_factory=list)
    tokens_per_second: float = 0.0
    seconds: float = 0.0


def total_steps(n_train: int, cfg: TrainSettings) -> int:
    return cfg.max_steps or max(1, math.ceil(cfg.epochs * math.ceil(n_train / cfg.batch_size)))


def token_loss_sum(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Summed next-token cross-entropy over answer tokens.

    The output layer runs only on the positions whose next token is an answer token: with a
    49k vocabulary it is a fifth of a step's work on SmolLM2, and most positions of each
    example are prompt or padding whose loss is never used. Models whose logits are more than
    the output layer applied to the decoder's last hidden state (soft-capping, a logit scale)
    go through the full model with ``logits_to_keep`` instead.
    """
    labels = batch["labels"]
    targets = labels[:, 1:]
    where = targets != -100  # (B, T-1): position t predicts label t+1
    if _plain_head(model):
        hidden = model.get_decoder()(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
        ).last_hidden_state
        logits = model.get_output_embeddings()(hidden[:, :-1][where])  # (answer tokens, V)
        return torch.nn.functional.cross_entropy(logits.float(), targets[where], reduction="sum")
    width = labels.size(1)
    answer = (labels != -100).any(dim=0).nonzero()
    first = int(answer[0]) if len(answer) else width - 1
    keep = width - first + 1  # positions first-1 .. width-1 predict labels first .. width
    logits = model(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], logits_to_keep=keep
    ).logits  # (B, keep, V)
    return torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.size(-1)),
        labels[:, width - keep + 1 :].reshape(-1),
        ignore_index=-100,
        reduction="sum",
    )


def _plain_head(model) -> bool:
    """Whether logits = output layer(decoder's last hidden state), nothing else."""
    cfg = model.config
    if (
        getattr(cfg, "final_logit_softcapping", None)
        or getattr(cfg, "logit_scale", None)
        or getattr(cfg, "logits_scaling", None)
    ):
        return False
    return (
        getattr(model, "get_decoder", None) is not None
        and model.get_decoder() is not None
        and model.get_output_embeddings() is not None
    )


@torch.no_grad()
def validation_loss(
    model, examples: list[Example], pad_id: int, ranks: distributed.Ranks, batch_size: int = 16
) -> float:
    """Mean answer-token loss over the validation split, shared out over ranks."""
    model.eval()
    mine = examples[ranks.rank :: ranks.world]
    total, count = 0.0, 0
    for i in range(0, len(mine), batch_size):
        chunk = mine[i : i + batch_size]
        total += token_loss_sum(model, collate(chunk, pad_id)).item()
        count += answer_token_count(chunk)
    model.train()
    total, count = distributed.all_sum([total, float(count)], ranks)
    return total / max(count, 1.0)


def train(
    model,
    train_set: list[Example],
    val_set: list[Example],
    pad_id: int,
    cfg: TrainSettings,
    run_dir: Path,
    ranks: distributed.Ranks,
    resume: bool = False,
    on_step=None,
) -> TrainResult:
    """Train the adapter; return the result with the best adapter loaded into ``model``.

    Args:
        model: the PEFT-wrapped (or fully trainable) model.
        train_set: tokenized training examples.
        val_set: tokenized validation examples (early stopping, best checkpoint).
        pad_id: padding token id.
        cfg: optimisation settings.
        run_dir: where checkpoints and the best adapter go.
        ranks: this process's rank and the world size.
        resume: continue from the newest checkpoint in ``run_dir``.
        on_step: called with each history row (progress display).
    """
    torch.manual_seed(cfg.seed)
    params = trainable(model)
    n_layers = model.config.num_hidden_layers
    optimizer = build_optimizer(list(params.values()), cfg)
    steps = total_steps(len(train_set), cfg)
    scheduler = build_scheduler(optimizer, cfg, steps)
    state = {
        "step": 0,
        "epoch": 0,
        "batch": 0,
        "best_val": math.inf,
        "best_step": 0,
        "bad_evals": 0,
        "history": [],
        "evals": [],
        "tokens": 0,
        "seconds": 0.0,
    }
    ckpt = checkpoint.latest(run_dir) if resume else None
    if ckpt is not None:
        state = checkpoint.load(ckpt, params, optimizer, scheduler, ranks.rank)
        log.info("resumed from %s (step %d of %d)", ckpt.name, state["step"], steps)
    lengths = [e.length for e in train_set]
    model.train()
    stop = False
    while state["step"] < steps and not stop:
        batches = epoch_batches(lengths, cfg.batch_size, cfg.seed, state["epoch"], cfg.group_by_length)
        for b in range(state["batch"], len(batches)):
            started = time.perf_counter()
            set_stage(params, stage_at(cfg.unfreeze, state["step"]), n_layers)
            loss, tokens = _step(model, train_set, batches[b], params, optimizer, scheduler, pad_id, cfg, ranks)
            state["step"] += 1
            state["batch"] = b + 1
            state["tokens"] += tokens
            state["seconds"] += time.perf_counter() - started
            row = {
                "step": state["step"],
                "epoch": state["epoch"],
                "loss": loss,
                "lr": scheduler.get_last_lr()[0],
                "tokens": state["tokens"],
            }
            state["history"].append(row)
            if state["step"] % cfg.eval_every == 0 or state["step"] == steps:
                stop = _evaluate(model, val_set, pad_id, cfg, state, params, run_dir, ranks)
            if on_step:
                on_step(row, state)
            if state["step"] % cfg.checkpoint_every == 0 or state["step"] == steps or stop:
                checkpoint.save(
                    run_dir, state["step"], params, optimizer, scheduler, state, cfg.keep_checkpoints, ranks.rank
                )
            if stop or state["step"] >= steps:
                break
        else:
            state["epoch"] += 1
            state["batch"] = 0
    _load_best(run_dir, params, state)
    return TrainResult(
        state["step"],
        state["best_step"],
        state["best_val"],
        stop,
        state["history"],
        state["evals"],
        state["tokens"] / max(state["seconds"], 1e-9),
        state["seconds"],
    )


def _step(model, data, batch, params, optimizer, scheduler, pad_id, cfg, ranks) -> tuple[float, int]:
    """One optimizer step over a global batch; returns (mean answer-token loss, tokens seen)."""
    examples = [data[i] for i in batch]
    global_count = answer_token_count(examples)
    loss_sum, tokens = 0.0, 0
    for micro in shard(batch, cfg.grad_accum, ranks.rank, ranks.world):
        if not micro:
            continue
        chunk = [data[i] for i in micro]
        loss = token_loss_sum(model, collate(chunk, pad_id)) / global_count
        loss.backward()
        loss_sum += loss.item() * global_count
        tokens += sum(e.length for e in chunk)
    live = [p for p in params.values() if p.grad is not None]
    distributed.all_reduce_grads(live, ranks)
    if cfg.max_grad_norm:
        torch.nn.utils.clip_grad_norm_(live, cfg.max_grad_norm)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    loss_sum, tokens = distributed.all_sum([loss_sum, float(tokens)], ranks)
    return loss_sum / global_count, int(tokens)


def _evaluate(model, val_set, pad_id, cfg, state, params, run_dir, ranks) -> bool:
    """Validation loss, best-adapter bookkeeping and early stopping; True means stop."""
    if not val_set:
        return False
    val = validation_loss(model, val_set, pad_id, ranks)
    state["evals"].append({"step": state["step"], "val_loss": val})
    if val < state["best_val"] - cfg.min_delta:
        state.update(best_val=val, best_step=state["step"], bad_evals=0)
        if ranks.main:
            with atomic_dir(run_dir / "best", overwrite=True) as tmp:
                checkpoint.save_weights(params, tmp / "adapter.safetensors")
    else:
        state["bad_evals"] += 1
    distributed.barrier(ranks)
    return cfg.patience is not None and state["bad_evals"] >= cfg.patience


def _load_best(run_dir: Path, params, state) -> None:
    best = run_dir / "best" / "adapter.safetensors"
    if not best.is_file() or state["best_step"] == 0:
        return
    checkpoint.load_weights(params, best)
