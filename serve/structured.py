"""Structured output: decoding constrained to a JSON schema, per row inside the batch.

A request's ``response_format`` (JSON object, or a JSON schema) is compiled once at admission
into an llguidance grammar (llguidance: the grammar engine vLLM, SGLang and llama.cpp use; its
errors name the schema keyword). The row's ``Constraint`` then masks, before each draw, every
token the grammar cannot take next, and advances the grammar with the token drawn; once the JSON
is complete only end-of-sequence is allowed. Constrained and free rows share the decode step:
only the sampling of a constrained row changes.

JSON is generated without optional whitespace (``whitespace_flexible`` off): a small model
left free to indent can fill its whole budget with blanks.
"""

from __future__ import annotations

import functools
import json

import numpy as np

from serve.errors import InvalidArgument

OPTIONS = {"whitespace_flexible": False}
KINDS = ("text", "json_object", "json_schema")
JSON_OBJECT = '{"type": "object"}'  # json_object: any JSON object


def compile_format(kind: str, schema: str, field: str = "sampling.response_format") -> str | None:
    """The llguidance grammar of a response format (None for plain text).

    Args:
        kind: "text" (or empty), "json_object" or "json_schema".
        schema: the JSON schema as JSON text (json_schema only).
        field: how the request names the format, for errors.

    Raises:
        InvalidArgument: an unknown kind, a schema that is not JSON, or one the grammar engine
            cannot compile (the message names the keyword).
    """
    if kind in ("", "text"):
        return None
    if kind not in KINDS:
        raise InvalidArgument(f"{field}.type: {kind!r} is not one of {', '.join(KINDS)}")
    from llguidance import LLMatcher

    if kind == "json_object":
        parsed: object = json.loads(JSON_OBJECT)
    else:
        try:
            parsed = json.loads(schema)
        except ValueError as exc:
            raise InvalidArgument(f"{field}.json_schema: not JSON ({exc})") from None
        if not isinstance(parsed, dict):
            raise InvalidArgument(f"{field}.json_schema: a JSON schema is an object, not {type(parsed).__name__}")
    grammar = LLMatcher.grammar_from_json_schema(parsed, overrides=OPTIONS)
    error = LLMatcher.validate_grammar(grammar)
    if error:
        raise InvalidArgument(f"{field}.json_schema: the grammar engine cannot use it: {error}")
    return grammar


def json_schema(kind: str, schema: str) -> str:
    """The JSON schema (as JSON text) of a json_object or json_schema response format that
    ``compile_format`` accepted: what a backend with its own grammar engine (vLLM) is given."""
    return JSON_OBJECT if kind == "json_object" else schema


@functools.cache
def _guidance_tokenizer(tokenizer_json: str, eos: int):
    from llguidance import LLTokenizer

    return LLTokenizer(tokenizer_json, eos_token=eos)


def guidance_tokenizer(tokenizer):
    """llguidance's view of a served model's tokenizer (built once per tokenizer, about 0.3 s)."""
    cached = getattr(tokenizer, "_guidance", None)
    if cached is None:
        cached = _guidance_tokenizer(tokenizer.tok.to_str(), min(tokenizer.eos_ids))
        tokenizer._guidance = cached
    return cached


class Constraint:
    """One row's grammar: ``mask`` before each draw, ``accept`` the token drawn."""

    def __init__(self, tokenizer, grammar: str) -> None:
        from llguidance import LLMatcher
        from llguidance.numpy import allocate_token_bitmask

        guide = guidance_tokenizer(tokenizer)
        self.matcher = LLMatcher(guide, grammar)
        self.bitmask = allocate_token_bitmask(1, guide.vocab_size)

    def mask(self, logits: np.ndarray) -> np.ndarray:
        """A copy of ``logits`` (V,) with every token the grammar forbids now at -inf."""
        from llguidance.numpy import fill_next_token_bitmask

        fill_next_token_bitmask(self.matcher, self.bitmask)
        allowed = np.unpackbits(self.bitmask.view(np.uint8), bitorder="little").astype(bool)
        out = np.full(logits.shape, -np.inf, dtype=np.float64)
        n = min(out.size, allowed.size)
        out[:n][allowed[:n]] = logits[:n][allowed[:n]]
        return out

    def accept(self, token: int) -> None:
        """Advance the grammar by the token drawn (always one ``mask`` allowed)."""
        self.matcher.consume_token(token)
