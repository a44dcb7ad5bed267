"""Reading and writing checkpoints for the compress steps (fp32 transformers models)."""

from __future__ import annotations

from pathlib import Path

from enclave.hf.loader import load
from enclave.manifest import Parent
from enclave.store import ResolvedModel, resolve_model

SAMPLE_PROMPTS = [
    "A patient's chart says 'BID'. What does that mean?",
    "Explain briefly what 'habeas corpus' means in law.",
    "The patient was discharged with instructions to",
]


def open_model(ref: str, adapter: str | None = None):
    """Resolve (hash-verified) and load a checkpoint, optionally with an adapter applied."""
    resolved = resolve_model(ref)
    model, tokenizer = load(resolved, adapter)
    return resolved, model, tokenizer


def lineage(resolved: ResolvedModel, role: str) -> list[Parent]:
    return [resolved.manifest.as_parent(role)] if resolved.manifest else []


def save_checkpoint(model, tokenizer, path: Path) -> None:
    """safetensors weights, config, generation config, tokenizer and chat template."""
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    for p in path.iterdir():
        p.chmod(0o644)


def logical_parameters(model) -> int:
    """Parameters as the unquantized model counts them (a GPTQ layer holds in x out packed weights)."""
    seen, total = set(), 0
    for module in model.modules():
        if hasattr(module, "qweight") and hasattr(module, "in_features"):
            bias = getattr(module, "bias", None)
            total += module.in_features * module.out_features + (bias.numel() if bias is not None else 0)
            continue
        for p in module.parameters(recurse=False):
            if id(p) not in seen:
                seen.add(id(p))
                total += p.numel()
    return total
