"""GGUF → safetensors checkpoint conversion with transformers (needs the ``torch`` extra).

transformers dequantizes the GGUF tensors to fp32 and reverses llama.cpp's q/k
permutation; we then drop the GGUF ``quantization_config`` so the result is a plain
checkpoint that transformers, PEFT, ONNX exporters and vLLM load.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from enclave.deps import require
from enclave.errors import EnclaveError
from enclave.hf.checkpoint import check_supported

log = logging.getLogger(__name__)


def load_gguf(gguf: Path):
    """Load a GGUF file as an fp32 transformers model and tokenizer (no network)."""
    torch = require("torch", "torch")
    transformers = require("transformers", "torch")
    require("gguf", "torch")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    kwargs = dict(gguf_file=gguf.name, local_files_only=True, trust_remote_code=False)
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(gguf.parent, **kwargs)
        model = transformers.AutoModelForCausalLM.from_pretrained(gguf.parent, dtype=torch.float32, **kwargs)
    except (ValueError, KeyError, OSError) as exc:
        raise EnclaveError(
            f"{gguf} could not be read as a GGUF model: {exc}",
            fix="check the file is a complete GGUF of a supported architecture (llama, mistral, qwen2, qwen3)",
        ) from None
    return model, tokenizer


def dequantized_copy(model):
    """A plain (non-GGUF) model with the same weights, ready for ``save_pretrained``."""
    transformers = require("transformers", "torch")
    config = model.config.to_dict()
    config.pop("quantization_config", None)
    config.pop("_model_name_or_path", None)
    plain = transformers.AutoModelForCausalLM.from_config(type(model.config).from_dict(config), dtype=model.dtype)
    plain.load_state_dict(model.state_dict(), strict=True)
    plain.generation_config = model.generation_config
    return plain


def fix_tokenizer(tokenizer, model) -> list[str]:
    """Repair known GGUF tokenizer-conversion faults; return what was changed.

    transformers 4.57 turns a ChatML model's ``eos_token`` into ``<|im_start|>`` and sets
    ``add_bos_token`` so chat prompts start with ``<|im_start|>`` twice (see
    shared/STACK.md). The end of an assistant turn must be the stop token.
    """
    changes = []
    template = tokenizer.chat_template or ""
    if "<|im_end|>" in template and tokenizer.eos_token != "<|im_end|>":
        changes.append(f"eos_token {tokenizer.eos_token!r} -> '<|im_end|>'")
        tokenizer.eos_token = "<|im_end|>"
    if tokenizer.pad_token is None or tokenizer.pad_token == tokenizer.bos_token:
        changes.append(f"pad_token {tokenizer.pad_token!r} -> {tokenizer.eos_token!r}")
        tokenizer.pad_token = tokenizer.eos_token
    if getattr(tokenizer, "add_bos_token", False) and tokenizer.bos_token and tokenizer.bos_token in template:
        changes.append("add_bos_token True -> False (the chat template writes it)")
        tokenizer.add_bos_token = False
    context = getattr(model.config, "max_position_embeddings", None)
    if context:
        tokenizer.model_max_length = context
    eos_id, pad_id = tokenizer.eos_token_id, tokenizer.pad_token_id
    model.config.eos_token_id = model.generation_config.eos_token_id = eos_id
    model.config.pad_token_id = model.generation_config.pad_token_id = pad_id
    return changes


def gguf_to_checkpoint(gguf: Path, out_dir: Path) -> dict:
    """Convert ``gguf`` into a safetensors checkpoint with tokenizer and chat template.

    Args:
        gguf: the GGUF file.
        out_dir: an existing, empty directory to write into.

    Returns:
        Settings to record in the manifest (versions, tokenizer fixes).
    """
    from importlib.metadata import version

    model, tokenizer = load_gguf(gguf)
    check_supported(model.config.to_dict(), str(gguf))
    plain = dequantized_copy(model)
    del model
    changes = fix_tokenizer(tokenizer, plain)
    for change in changes:
        log.info("tokenizer fix: %s", change)
    plain.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    for path in Path(out_dir).iterdir():
        path.chmod(0o644)
    return {
        "converter": {"transformers": version("transformers"), "gguf": version("gguf"), "torch": version("torch")},
        "tokenizer_fixes": changes,
    }
