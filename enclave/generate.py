"""`enclave generate`: try a model from the terminal, streaming tokens as they come.

Uses transformers on PyTorch (the ``torch`` extra); the serving engines live in ``serve``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pydantic import Field

from enclave.checkpoint import quantization_config
from enclave.config import StrictConfig
from enclave.deps import require, require_gptqmodel
from enclave.errors import EnclaveError
from enclave.log import quiet
from enclave.manifest import require_valid
from enclave.store import ResolvedModel, resolve_adapter

log = logging.getLogger(__name__)


class GenerateConfig(StrictConfig):
    """Decoding settings for `enclave generate`."""

    max_new_tokens: int = Field(128, ge=1, le=32768)
    """How many tokens to generate at most."""
    temperature: float = Field(0.0, ge=0.0, le=100.0)
    """Sampling temperature; 0 means greedy (deterministic)."""
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    """Nucleus sampling: keep the smallest token set with this much probability mass."""
    top_k: int = Field(0, ge=0)
    """Keep only the k most likely tokens; 0 turns it off."""
    repetition_penalty: float = Field(1.0, gt=0.0)
    """Above 1 discourages repeating tokens (CTRL paper's penalty)."""
    seed: int = 0
    """Random seed for sampling."""
    system: str | None = None
    """An optional system message put before the prompt."""
    chat: bool = True
    """Apply the model's chat template; false sends the prompt as raw text."""


@dataclass(frozen=True)
class GenerateResult:
    """The generated text and its counts; the CLI prints only the counts to the log."""

    text: str
    token_ids: list[int]
    prompt_tokens: int
    seconds: float
    finish_reason: str


def load(model: ResolvedModel, adapter: str | None = None):
    """Load a resolved checkpoint with transformers, fp32, safetensors only, no remote code.

    Args:
        model: the base checkpoint.
        adapter: an adapter artifact (a path, or a name in $ENCLAVE_HOME/adapters) to apply, or None.

    Raises:
        EnclaveError: the adapter fails verification or was trained on another base.
    """
    torch = require("torch", "torch")
    transformers = require("transformers", "torch")
    transformers.utils.logging.disable_progress_bar()  # loading takes a second; no bar needed
    kwargs = dict(local_files_only=True, trust_remote_code=False)
    if quantization_config(model.path):
        # transformers runs GPTQ checkpoints through optimum and GPTQModel's kernels.
        require_gptqmodel("loading a GPTQ checkpoint")
        quiet("logbar")
    tokenizer = transformers.AutoTokenizer.from_pretrained(model.path, **kwargs)
    lm = transformers.AutoModelForCausalLM.from_pretrained(
        model.path, dtype=torch.float32, use_safetensors=True, **kwargs
    )
    if adapter is not None:
        lm = with_adapter(lm, model, resolve_adapter(adapter))
    return lm.eval(), tokenizer


def with_adapter(lm, base: ResolvedModel, adapter: Path):
    """Apply a verified adapter artifact to a loaded base, refusing one made for another base."""
    manifest = require_valid(adapter)
    if manifest.kind != "adapter":
        raise EnclaveError(f"--adapter {adapter}: a {manifest.kind} artifact, not an adapter", fix="pass a directory made by `enclave tune`")
    expected = manifest.settings.get("base_model", {}).get("digest")
    if expected and base.manifest and expected != base.manifest.digest:
        raise EnclaveError(
            f"adapter {adapter} was trained on base {expected}, but {base.ref} is {base.manifest.digest}",
            fix="use the base model it was trained on (its manifest.json, settings.base_model)",
        )
    peft = require("peft", "tune")
    return peft.PeftModel.from_pretrained(lm, adapter, is_trainable=False)


def encode(tokenizer, prompt: str, cfg: GenerateConfig) -> list[int]:
    """Token ids for the prompt, through the chat template unless ``cfg.chat`` is false."""
    if not cfg.chat or not tokenizer.chat_template:
        return tokenizer(prompt, add_special_tokens=True)["input_ids"]
    messages = ([{"role": "system", "content": cfg.system}] if cfg.system else []) + [
        {"role": "user", "content": prompt}
    ]
    return list(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"])


def generate(lm, tokenizer, prompt: str, cfg: GenerateConfig, on_text: Callable[[str], None] | None = None) -> GenerateResult:
    """Generate a completion, calling ``on_text`` with each new piece of text.

    Args:
        lm: a causal LM from ``load``.
        tokenizer: its tokenizer.
        prompt: the user's prompt (never logged).
        cfg: decoding settings.
        on_text: called with text deltas as they are decoded.
    """
    torch = require("torch", "torch")
    transformers = require("transformers", "torch")
    ids = encode(tokenizer, prompt, cfg)
    streamer = None
    if on_text is not None:
        class _Stream(transformers.TextStreamer):
            def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
                if text:
                    on_text(text)

        streamer = _Stream(tokenizer, skip_prompt=True, skip_special_tokens=True)
    sampling = cfg.temperature > 0
    torch.manual_seed(cfg.seed)
    started = time.perf_counter()
    with torch.inference_mode():
        out = lm.generate(
            torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            max_new_tokens=cfg.max_new_tokens, do_sample=sampling,
            temperature=cfg.temperature if sampling else None, top_p=cfg.top_p if sampling else None,
            top_k=(cfg.top_k or None) if sampling else None, repetition_penalty=cfg.repetition_penalty,
            pad_token_id=tokenizer.pad_token_id, streamer=streamer,
        )  # fmt: skip
    seconds = time.perf_counter() - started
    new = out[0, len(ids):].tolist()
    eos = set(_as_list(lm.generation_config.eos_token_id))
    finish = "stop" if new and new[-1] in eos else "length"
    return GenerateResult(tokenizer.decode(new, skip_special_tokens=True), new, len(ids), seconds, finish)


def _as_list(value) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]
