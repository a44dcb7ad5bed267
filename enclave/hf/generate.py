"""Generating from a loaded checkpoint with transformers: `enclave generate` (try a model from the
terminal, streaming tokens as they come) and the checks of tune and compress.

Uses transformers on PyTorch (the ``torch`` extra); load the model with ``enclave.hf.loader``.
The serving engines live in ``serve``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from pydantic import Field

from enclave.config import StrictConfig
from enclave.deps import require

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


def encode(tokenizer, prompt: str, cfg: GenerateConfig) -> list[int]:
    """Token ids for the prompt, through the chat template unless ``cfg.chat`` is false."""
    if not cfg.chat or not tokenizer.chat_template:
        return tokenizer(prompt, add_special_tokens=True)["input_ids"]
    messages = ([{"role": "system", "content": cfg.system}] if cfg.system else []) + [
        {"role": "user", "content": prompt}
    ]
    return list(
        tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)[
            "input_ids"
        ]
    )


def generate(
    lm, tokenizer, prompt: str, cfg: GenerateConfig, on_text: Callable[[str], None] | None = None
) -> GenerateResult:
    """Generate a completion, calling ``on_text`` with each new piece of text.

    Args:
        lm: a causal LM from ``enclave.hf.loader.load``.
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
            torch.tensor([ids]),
            attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            max_new_tokens=cfg.max_new_tokens,
            do_sample=sampling,
            temperature=cfg.temperature if sampling else None,
            top_p=cfg.top_p if sampling else None,
            top_k=(cfg.top_k or None) if sampling else None,
            repetition_penalty=cfg.repetition_penalty,
            pad_token_id=tokenizer.pad_token_id,
            streamer=streamer,
        )
    seconds = time.perf_counter() - started
    new = out[0, len(ids) :].tolist()
    eos = set(_as_list(lm.generation_config.eos_token_id))
    finish = "stop" if new and new[-1] in eos else "length"
    return GenerateResult(tokenizer.decode(new, skip_special_tokens=True), new, len(ids), seconds, finish)


def _as_list(value) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]
