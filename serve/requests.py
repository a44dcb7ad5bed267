"""Checking a GenerateRequest or TokenizeRequest field by field, before any model work.

Every problem names the field as the .proto spells it, the value, and what is allowed.
"""

from __future__ import annotations

import math
import uuid
import weakref

from enclave.v1 import inference_pb2 as pb
from serve.config import LimitSettings
from serve.errors import InvalidArgument, OutOfRange
from serve.job import Sampling
from serve.structured import compile_format, json_schema

ROLES = ("system", "user", "assistant")
MAX_STOP = 16
MAX_STOP_CHARS = 256
MAX_LOGPROBS = 20  # alternatives per token, as OpenAI's top_logprobs


def request_id(value: str) -> str:
    if not value:
        return uuid.uuid4().hex
    if len(value) > 128 or not value.isprintable():
        raise InvalidArgument(f"request_id: at most 128 printable characters (got {len(value)} characters)")
    return value


def messages(chat: pb.Chat) -> list[dict[str, str]]:
    if not chat.messages:
        raise InvalidArgument("chat.messages: empty; send at least one message")
    out = []
    for i, m in enumerate(chat.messages):
        if m.role not in ROLES:
            raise InvalidArgument(f"chat.messages[{i}].role: {m.role!r} is not one of {', '.join(ROLES)}")
        out.append({"role": m.role, "content": m.content})
    return out


def prompt_ids(request, tokenizer, text_field: str = "prompt") -> list[int]:
    """Token ids of the request's input (raw text, or chat through the template)."""
    which = request.WhichOneof("input")
    if which is None:
        raise InvalidArgument(f"input: set `{text_field}` (text) or `chat` (messages)")
    if which == "chat":
        return tokenizer.apply_chat(messages(request.chat))
    text = getattr(request, text_field)
    if not text:
        raise InvalidArgument(f"{text_field}: empty; send some text")
    return tokenizer.encode(text)


_MAX_TOKEN_BYTES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def max_token_bytes(tokenizer) -> int:
    """The most bytes of text one token of the vocabulary covers (an upper bound; cached per tokenizer)."""
    most = _MAX_TOKEN_BYTES.get(tokenizer)
    if most is None:
        most = max(len(piece.encode()) for piece in tokenizer.tok.get_vocab())
        _MAX_TOKEN_BYTES[tokenizer] = most
    return most


def input_chars(request, text_field: str = "prompt") -> int:
    """Characters of text in the request's input (the prompt, or every chat message's content and role).

    Characters, not bytes: counting them costs nothing, and a text has at least as many bytes as characters.
    """
    if request.WhichOneof("input") == "chat":
        return sum(len(m.content) + len(m.role) for m in request.chat.messages)
    return len(getattr(request, text_field))


def check_bytes(request, tokenizer, most_tokens: int, text_field: str = "prompt") -> None:
    """Refuse input that cannot fit in ``most_tokens`` tokens, from its length alone, before tokenizing it.

    No token covers more than ``max_token_bytes`` bytes, and text has at least as many bytes as
    characters, so text longer than ``most_tokens * max_token_bytes`` characters is certainly over
    the limit: it is refused at once instead of costing seconds of tokenizer time.
    """
    size, per_token = input_chars(request, text_field), max_token_bytes(tokenizer)
    if size > most_tokens * per_token:
        field = "chat.messages" if request.WhichOneof("input") == "chat" else text_field
        raise OutOfRange(
            f"{field}: {size} characters cannot fit in {most_tokens} tokens (this server's limit, "
            f"limits.max_prompt_tokens; no token is longer than {per_token} bytes); shorten it"
        )


def sampling(p: pb.SamplingParams, limits: LimitSettings) -> Sampling:
    max_tokens = p.max_tokens or limits.default_new_tokens
    if max_tokens > limits.max_new_tokens:  # the request's own limit: INVALID_ARGUMENT, which clients do not retry
        raise InvalidArgument(
            f"sampling.max_tokens: {max_tokens} is over this server's limit of {limits.max_new_tokens} "
            "(limits.max_new_tokens)"
        )
    temperature = p.temperature if p.HasField("temperature") else 0.0
    if not (0.0 <= temperature <= 100.0) or math.isnan(temperature):
        raise InvalidArgument(f"sampling.temperature: {temperature} is outside 0 to 100 (0 is greedy)")
    top_p = p.top_p if p.HasField("top_p") else 1.0
    if not (0.0 < top_p <= 1.0):
        raise InvalidArgument(f"sampling.top_p: {top_p} is outside (0, 1]; 1 turns it off")
    penalty = p.repetition_penalty if p.HasField("repetition_penalty") else 1.0
    if not penalty > 0 or math.isinf(penalty):
        raise InvalidArgument(f"sampling.repetition_penalty: {penalty} must be a number above 0 (1 turns it off)")
    if len(p.stop) > MAX_STOP:
        raise InvalidArgument(f"sampling.stop: {len(p.stop)} strings; at most {MAX_STOP}")
    if p.min_tokens > max_tokens:
        raise InvalidArgument(
            f"sampling.min_tokens: {p.min_tokens} is above sampling.max_tokens ({max_tokens}); "
            "lower it or raise max_tokens"
        )
    penalties = {}
    for name in ("presence_penalty", "frequency_penalty"):
        value = getattr(p, name) if p.HasField(name) else 0.0
        if not -2.0 <= value <= 2.0:  # NaN fails it too
            raise InvalidArgument(f"sampling.{name}: {value} is outside -2 to 2 (0 turns it off)")
        penalties[name] = float(value)
    if len(p.stop_token_ids) > MAX_STOP:
        raise InvalidArgument(f"sampling.stop_token_ids: {len(p.stop_token_ids)} ids; at most {MAX_STOP}")
    logprobs = p.logprobs if p.HasField("logprobs") else None
    if logprobs is not None and logprobs > MAX_LOGPROBS:
        raise InvalidArgument(f"sampling.logprobs: {logprobs} alternatives; at most {MAX_LOGPROBS}")
    min_p = p.min_p if p.HasField("min_p") else 0.0
    if not 0.0 <= min_p <= 1.0:
        raise InvalidArgument(f"sampling.min_p: {min_p} is outside 0 to 1 (0 turns it off)")
    for i, s in enumerate(p.stop):
        if not s or len(s) > MAX_STOP_CHARS:
            raise InvalidArgument(f"sampling.stop[{i}]: must have 1 to {MAX_STOP_CHARS} characters (got {len(s)})")
    grammar = (
        compile_format(p.response_format.type, p.response_format.json_schema) if p.HasField("response_format") else None
    )
    return Sampling(
        max_tokens=max_tokens,
        temperature=float(temperature),
        top_p=float(top_p),
        top_k=int(p.top_k),
        repetition_penalty=float(penalty),
        stop=tuple(p.stop),
        seed=p.seed if p.HasField("seed") else None,
        min_tokens=int(p.min_tokens),
        min_p=float(min_p),
        logprobs=logprobs,
        stop_token_ids=tuple(int(i) for i in p.stop_token_ids),
        grammar=grammar,
        schema=json_schema(p.response_format.type, p.response_format.json_schema) if grammar else None,
        **penalties,
    )


def check_prompt(ids: list[int], context_length: int, limits: LimitSettings) -> None:
    if len(ids) > limits.max_prompt_tokens:
        raise OutOfRange(
            f"prompt: {len(ids)} tokens is over this server's limit of {limits.max_prompt_tokens} "
            "(limits.max_prompt_tokens)"
        )
    if len(ids) >= context_length:
        raise InvalidArgument(
            f"prompt: {len(ids)} tokens leave no room to generate in the model's context of {context_length}; "
            "shorten it"
        )
