"""Tokenization on a serving machine: HF ``tokenizers`` plus the model's Jinja chat template.

No torch and no transformers: an ONNX artifact is served with onnxruntime, this module and numpy.
The template runs in Jinja's immutable sandbox, as transformers renders it, so the ids match
``tokenizer.apply_chat_template(..., add_generation_prompt=True)``.

Message content is text, never control tokens: a user who types ``<|im_end|><|im_start|>system``
gets those characters, not a forged system turn (transformers would give the control tokens).
"""

from __future__ import annotations

import json
import re
import uuid
from datetime import datetime
from pathlib import Path

from serve.errors import InvalidArgument


def _token_text(value) -> str | None:
    return value.get("content") if isinstance(value, dict) else value


def _encode(tok, text: str, add_special_tokens: bool):
    """``tok.encode``, through encode_batch: the batch call releases the GIL while it runs (plain encode
    holds it), so a long prompt tokenized on a worker thread does not stall the event loop."""
    return tok.encode_batch([text], add_special_tokens=add_special_tokens)[0]


def _overlaps(a: int, b: int, spans: list[tuple[int, int]]) -> bool:
    return any(a < end and start < b for start, end in spans)


def _as_list(value) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's table from bytes to the printable characters byte-level BPE writes them as."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("\xa1"), ord("\xac") + 1), *range(ord("\xae"), 256)]
    extra, table = 0, {}
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


_UNICODE_TO_BYTE = {c: b for b, c in _bytes_to_unicode().items()}


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
        self.special_ids = {i for i, t in self.tok.get_added_tokens_decoder().items() if t.special}
        self._template = None
        self._text_tok = None

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
        return _encode(self.tok, text, True).ids

    def apply_chat(self, messages: list[dict[str, str]]) -> list[int]:
        """Chat messages through the chat template, with the assistant prompt added.

        The template's own special tokens are control tokens; special tokens typed into a message's
        content are encoded as the text they are.

        Raises:
            InvalidArgument: no chat template, the template refused the messages, or a message with
                special-token text under a template that changes content (so it cannot be kept apart).
        """
        if not self.chat_template:
            raise InvalidArgument("chat: this model has no chat template; send the input as `prompt` text instead")
        text = self._render(messages)
        enc = _encode(self.tok, text, False)
        spans = self._content_spans(messages, text)
        if spans is None:  # the template changes content: refuse what cannot be kept as text
            self._refuse_special_text(messages)
            return enc.ids
        cuts = [
            (i, a, b) for i, (a, b) in zip(enc.ids, enc.offsets) if i in self.special_ids and not _overlaps(a, b, spans)
        ]
        if len(cuts) == sum(i in self.special_ids for i in enc.ids):
            return enc.ids  # no special token came from content: the ids transformers gives, unchanged
        # Cut at the template's special tokens only. The tokenizer itself splits at special tokens before
        # it pre-tokenizes, so encoding the text between cuts (template text and content together) with
        # special tokens off gives the ids it would give if the content's special tokens were plain text.
        ids, start = [], 0
        for i, a, b in cuts:
            ids += [*self._text_ids(text[start:a]), i]
            start = b
        return ids + self._text_ids(text[start:])

    def _render(self, messages: list[dict]) -> str:
        return self._compiled().render(
            messages=messages,
            add_generation_prompt=True,
            bos_token=self.bos_token or "",
            eos_token=self.eos_token or "",
        )

    def _content_spans(self, messages: list[dict], text: str) -> list[tuple[int, int]] | None:
        """Where each message's content lies in the rendered text, found by rendering with a unique
        marker in place of each content; None when the template does not copy content verbatim."""
        tag = uuid.uuid4().hex
        marked = [
            {**m, "content": f"\ue000{tag}.{i}\ue001"} if isinstance(m.get("content"), str) else m
            for i, m in enumerate(messages)
        ]
        try:
            rendered = self._render(marked)
        except Exception:  # a template that inspects content may refuse a marker: treat it as one that changes content
            return None
        parts = re.split(f"\ue000{tag}\\.(\\d+)\ue001", rendered)  # text, index, text, index, ..., text
        spans, pos = [], 0
        for j in range(1, len(parts), 2):
            pos += len(parts[j - 1])
            parts[j] = messages[int(parts[j])]["content"]
            spans.append((pos, pos + len(parts[j])))
            pos += len(parts[j])
        return spans if "".join(parts) == text else None

    def _refuse_special_text(self, messages: list[dict]) -> None:
        for i, m in enumerate(messages):
            content = m.get("content")
            if isinstance(content, str):
                found = sorted(self.special_ids & set(self.tok.encode(content, add_special_tokens=False).ids))
                if found:
                    names = ", ".join(repr(self.tok.id_to_token(t)) for t in found)
                    raise InvalidArgument(
                        f"chat.messages[{i}].content: contains the special token text {names}, which this "
                        "model's chat template (it changes content) cannot keep apart as text; remove it, or "
                        "send the input as `prompt` text"
                    )

    def _text_ids(self, text: str) -> list[int]:
        """Text with special tokens encoded as their characters (a second tokenizer: the flag is not per call)."""
        if not text:
            return []
        if self._text_tok is None:
            from tokenizers import Tokenizer

            tok = Tokenizer.from_str(self.tok.to_str())
            tok.encode_special_tokens = True
            self._text_tok = tok
        return _encode(self._text_tok, text, False).ids

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

    def token_bytes(self, ids: list[int]) -> list[bytes]:
        """Each id's own bytes (OpenAI's ``bytes`` of a log-probability entry): exact also for a
        token that holds part of a multi-byte character, where its text is U+FFFD. Byte-level BPE
        tokens (GPT-2's byte-to-character table) and byte-fallback tokens (``<0xE2>``) are mapped
        back to their bytes; other tokens are their text in UTF-8."""
        byte_level = self._byte_level()
        out = []
        for i in ids:
            token = self.tok.id_to_token(i) or ""
            if i in self.special_ids:
                out.append(token.encode())
            elif byte_level and all(c in _UNICODE_TO_BYTE for c in token):
                out.append(bytes(_UNICODE_TO_BYTE[c] for c in token))
            elif m := re.fullmatch(r"<0x([0-9A-Fa-f]{2})>", token):
                out.append(bytes([int(m.group(1), 16)]))
            else:
                out.append(token.replace("\u2581", " ").encode())
        return out

    def _byte_level(self) -> bool:
        if not hasattr(self, "_is_byte_level"):
            decoder = json.loads(self.tok.to_str()).get("decoder") or {}
            kinds = {d.get("type") for d in decoder.get("decoders", [decoder])}
            self._is_byte_level = "ByteLevel" in kinds
        return self._is_byte_level

    def pieces(self, ids: list[int]) -> list[str]:
        """Each id's text on its own (byte-level pieces that are not whole characters decode with U+FFFD)."""
        return [self.tok.decode([i], skip_special_tokens=False) for i in ids]
