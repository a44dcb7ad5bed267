"""Tokenization on a serving machine: HF ``tokenizers`` plus the model's Jinja chat template.

No torch and no transformers: an ONNX artifact is served with onnxruntime, this module and numpy.
The template runs in Jinja's immutable sandbox, as transformers renders it, so the ids match
``tokenizer.apply_chat_template(..., add_generation_prompt=True)``.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

from serve.errors import InvalidArgument


def _token_text(value) -> str | None:
    return value.get("content") if isinstance(value, dict) else value


def _as_list(value) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


class ServeTokenizer:
    """Encode, decode and chat-format for one artifact directory."""

    def __init__(self, root: Path) -> None:
        from tokenizers import Tokenizer

        root = Path(root)
        self.tok = Tokenizer.from_file(str(root / "tokenizer.json"))
        cfg_path = root / "tokenizer_config.json"
        cfg = json.loads(cfg_path.read_text()) if cfg_path.is_file() else {}
        template = root / "chat_template.jinja"
        self.chat_template = template.read_text() if template.is_file() else cfg.get("chat_template")
        self.bos_token = _token_text(cfg.get("bos_token"))
        self.eos_token = _token_text(cfg.get("eos_token"))
        self.eos_ids = self._eos_ids(root)
        self._template = None

    def _eos_ids(self, root: Path) -> set[int]:
        ids: set[int] = set()
        for name, keys in (("generation_config.json", ()), ("config.json", ()), ("genai_config.json", ("model",))):
            path = root / name
            if path.is_file():
                node = json.loads(path.read_text())
                for key in keys:
                    node = node.get(key, {})
                ids.update(int(i) for i in _as_list(node.get("eos_token_id")))
        if self.eos_token is not None and self.tok.token_to_id(self.eos_token) is not None:
            ids.add(self.tok.token_to_id(self.eos_token))
        return ids

    def encode(self, text: str) -> list[int]:
        """Raw text as the model sees it (the tokenizer's own special tokens, if it adds any)."""
        return self.tok.encode(text, add_special_tokens=True).ids

    def apply_chat(self, messages: list[dict[str, str]]) -> list[int]:
        """Chat messages through the chat template, with the assistant prompt added."""
        if not self.chat_template:
            raise InvalidArgument("chat: this model has no chat template; send the input as `prompt` text instead")
        text = self._compiled().render(messages=messages, add_generation_prompt=True, bos_token=self.bos_token or "",
                                       eos_token=self.eos_token or "")  # fmt: skip
        return self.tok.encode(text, add_special_tokens=False).ids

    def _compiled(self):
        if self._template is None:
            from jinja2.sandbox import ImmutableSandboxedEnvironment

            def raise_exception(message):
                raise InvalidArgument(f"chat: the model's chat template refused the messages: {message}")

            env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
            env.globals["raise_exception"] = raise_exception
            env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
            self._template = env.from_string(self.chat_template)
        return self._template

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=True)

    def pieces(self, ids: list[int]) -> list[str]:
        """Each id's text on its own (byte-level pieces that are not whole characters decode with U+FFFD)."""
        return [self.tok.decode([i], skip_special_tokens=False) for i in ids]
