"""Base model loading and the adapter: LoRA with PEFT (or full fine-tuning), checked against the model."""

from __future__ import annotations

import re

import torch

from enclave.deps import require
from enclave.errors import EnclaveError
from enclave.store import resolve_model
from tune.config import LoraSettings, UnfreezeStage

_LAYER = re.compile(r"\.layers\.(\d+)\.")


def load_base(ref: str):
    """Resolve (hash-verified) and load a base model in fp32 with its tokenizer."""
    from enclave.hf.loader import load

    resolved = resolve_model(ref)
    model, tokenizer = load(resolved)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return resolved, model, tokenizer


def linear_names(model) -> list[str]:
    """The distinct last names of the model's Linear and Embedding modules (what LoRA can target)."""
    return sorted(
        {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Embedding))}
    )


def apply_adapter(model, cfg: LoraSettings):
    """Wrap the model with LoRA adapters, or unfreeze everything for full fine-tuning.

    Raises:
        EnclaveError: a target or saved module that the model does not have (the error
            lists the names that exist).
    """
    existing = linear_names(model)
    for key, wanted in (("target_modules", cfg.target_modules), ("modules_to_save", cfg.modules_to_save)):
        missing = [m for m in wanted if m not in existing]
        if missing:
            raise EnclaveError(
                f"lora.{key}: {', '.join(missing)} not found in the base model",
                fix=f"choose from the modules it has: {', '.join(existing)}",
            )
    if cfg.method == "full":
        model.requires_grad_(True)
        return model
    peft = require("peft", "tune")
    peft_cfg = peft.LoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=list(cfg.target_modules),
        modules_to_save=list(cfg.modules_to_save) or None,
        task_type="CAUSAL_LM",
        bias="none",
    )
    return peft.get_peft_model(model, peft_cfg)


def trainable(model) -> dict[str, torch.nn.Parameter]:
    """Parameters that belong to the adapter (all of them for full fine-tuning)."""
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def layer_of(name: str) -> int | None:
    m = _LAYER.search(name)
    return int(m.group(1)) if m else None


def stage_layers(stage: UnfreezeStage, n_layers: int) -> set[int]:
    """The layer indices a stage trains: all, top:N or a-b."""
    spec = stage.layers.strip()
    if spec == "all":
        return set(range(n_layers))
    if spec.startswith("top:") and spec[4:].isdigit():
        return set(range(max(0, n_layers - int(spec[4:])), n_layers))
    if re.fullmatch(r"\d+-\d+", spec):
        a, b = map(int, spec.split("-"))
        if a <= b < n_layers:
            return set(range(a, b + 1))
    raise EnclaveError(
        f"train.unfreeze: layers {spec!r} is not valid for a {n_layers}-layer model",
        fix="use all, top:N or a-b (0-based, inclusive)",
    )


def stage_at(stages: list[UnfreezeStage], step: int) -> UnfreezeStage | None:
    """The unfreezing stage in force at optimizer step ``step`` (0-based)."""
    start = 0
    for stage in stages:
        if stage.steps is None or step < start + stage.steps:
            return stage
        start += stage.steps
    return stages[-1] if stages else None


def set_stage(params: dict[str, torch.nn.Parameter], stage: UnfreezeStage | None, n_layers: int) -> int:
    """Let only the adapters of the stage's layers train (others keep their weights); return how many tensors train."""
    layers = stage_layers(stage, n_layers) if stage else None
    count = 0
    for name, p in params.items():
        layer = layer_of(name)
        p.requires_grad_(layers is None or layer is None or layer in layers)
        count += p.requires_grad
    return count


def load_tokenizer(ref: str):
    """Resolve a base model and load only its tokenizer and context length (no weights)."""
    import transformers

    resolved = resolve_model(ref)
    kwargs = dict(local_files_only=True, trust_remote_code=False)
    tokenizer = transformers.AutoTokenizer.from_pretrained(resolved.path, **kwargs)
    config = transformers.AutoConfig.from_pretrained(resolved.path, **kwargs)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer, getattr(config, "max_position_embeddings", None)
