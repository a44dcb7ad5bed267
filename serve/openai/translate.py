"""OpenAI request bodies to ``enclave.v1.GenerateRequest`` messages, and model ids to (model,
version, adapter): an HTTP call then goes through the same admission, limits, engines, metrics
and audit as a gRPC one.

Model ids, as ``GET /v1/models`` lists them: a served model's name; ``name@version`` for a
version of it; an adapter's name (vLLM's convention for LoRA modules), or ``model:adapter``
where two models have an adapter of that name.
"""

from __future__ import annotations

import json

from enclave.v1 import inference_pb2 as pb
from serve.errors import InvalidArgument, NotFound
from serve.models import Models
from serve.openai.protocol import ChatRequest, CompletionRequest, Message, Sampling

ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
"""OpenAI's message roles and the chat template's ("developer" is OpenAI's newer name for system)."""

# Fields this server does not act on yet: accepted at their neutral values, refused otherwise
# (a silently ignored penalty or schema would return something other than what was asked).
NEUTRAL = {
    "suffix": (None, ""),
}


def resolve(models: Models, model_id: str) -> tuple[str, str, str]:
    """(model, version, adapter) of a model id; NotFound lists the ids there are."""
    if "@" in model_id:
        name, version = model_id.split("@", 1)
        return name, version, ""
    if model_id in models.active:
        return model_id, "", ""
    if ":" in model_id:
        name, adapter = model_id.split(":", 1)
        if name in models.active:
            return name, "", adapter
    owners = [name for name, served in models.active.items() if model_id in served.adapters]
    if len(owners) == 1:
        return owners[0], "", model_id
    if len(owners) > 1:
        choices = ", ".join(f"{o}:{model_id}" for o in owners)
        raise InvalidArgument(f"model: several models have an adapter {model_id!r}; name one of {choices}")
    raise NotFound(f"model: no model or adapter {model_id!r}; this server has: {', '.join(model_ids(models))}")


def model_ids(models: Models) -> list[str]:
    """Every id ``resolve`` takes for the active versions: models, then their adapters."""
    owners: dict[str, list[str]] = {}
    for name, served in models.active.items():
        for adapter in served.adapters:
            owners.setdefault(adapter, []).append(name)
    adapters = [
        a if len(names) == 1 and a not in models.active else f"{n}:{a}"
        for a, names in sorted(owners.items())
        for n in names
    ]
    return [*models.active, *adapters]


def _check_neutral(body) -> None:
    for field, neutral in NEUTRAL.items():
        value = getattr(body, field, None)  # a field of the other endpoint's body: None
        if value is not None and value not in neutral:
            raise InvalidArgument(
                f"{field}: {value!r} is not supported by this server yet; leave it out (or send {neutral[-1]!r})"
            )
    best_of = getattr(body, "best_of", None)
    if best_of not in (None, body.n):
        raise InvalidArgument(f"best_of: {best_of} is not supported; leave it out or equal to n ({body.n})")


def sampling(body: Sampling, max_tokens: int | None) -> pb.SamplingParams:
    """The decoding settings. OpenAI's defaults where a field is left out: temperature 1, top_p 1."""
    stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    bad = [i for i in body.stop_token_ids or [] if not 0 <= i < 2**32]
    if bad:
        raise InvalidArgument(f"stop_token_ids: {bad[0]} is not a token id")
    params = pb.SamplingParams(
        max_tokens=max_tokens or 0,
        temperature=1.0 if body.temperature is None else body.temperature,
        top_p=1.0 if body.top_p is None else body.top_p,
        top_k=max(0, body.top_k or 0),  # vLLM's -1 is off, as 0 is here
        stop=stop,
        min_tokens=body.min_tokens,
        stop_token_ids=body.stop_token_ids or [],
    )
    for name in ("repetition_penalty", "presence_penalty", "frequency_penalty", "min_p"):
        if getattr(body, name) is not None:
            setattr(params, name, getattr(body, name))
    if body.seed is not None:
        params.seed = body.seed
    if not 0.0 <= params.temperature <= 2.0:
        raise InvalidArgument(f"temperature: {body.temperature} is outside 0 to 2")
    return params


def _request(body: Sampling, models: Models, max_tokens: int | None, logprobs: int | None) -> pb.GenerateRequest:
    _check_neutral(body)
    model, version, adapter = resolve(models, body.model)
    request = pb.GenerateRequest(
        request_id=body.request_id or "",
        user=body.user or "",
        model=model,
        model_version=version,
        adapter=adapter,
        sampling=sampling(body, max_tokens),
    )
    if logprobs is not None:
        request.sampling.logprobs = logprobs
    fmt = getattr(body, "response_format", None)
    if fmt is not None:
        request.sampling.response_format.CopyFrom(response_format(fmt))
    return request


def response_format(fmt: dict) -> pb.ResponseFormat:
    """OpenAI's ``response_format`` (``{"type": "json_schema", "json_schema": {"name", "schema",
    "strict"}}``, ``{"type": "json_object"}``, ``{"type": "text"}``) as the gRPC message."""
    kind = fmt.get("type")
    if not isinstance(kind, str):
        raise InvalidArgument("response_format.type: give text, json_object or json_schema")
    if kind != "json_schema":
        return pb.ResponseFormat(type=kind)
    spec = fmt.get("json_schema")
    schema = spec.get("schema") if isinstance(spec, dict) else None
    if not isinstance(schema, dict):
        raise InvalidArgument("response_format.json_schema.schema: give the JSON schema (an object)")
    return pb.ResponseFormat(type=kind, json_schema=json.dumps(schema))


def text(message: Message, i: int) -> str:
    """A message's text: the string, or its text parts joined."""
    if message.content is None or isinstance(message.content, str):
        return message.content or ""
    parts = []
    for j, part in enumerate(message.content):
        if part.type != "text" or part.text is None:
            raise InvalidArgument(f"messages[{i}].content[{j}].type: {part.type!r}; this server reads text parts only")
        parts.append(part.text)
    return "".join(parts)


def chat(body: ChatRequest, models: Models) -> pb.GenerateRequest:
    """A chat completion request as a GenerateRequest with ``chat`` set."""
    if body.max_tokens is not None and body.max_completion_tokens is not None:
        raise InvalidArgument("max_tokens and max_completion_tokens: send one (max_tokens is the older name)")
    if body.logprobs not in (None, True, False):
        raise InvalidArgument(
            f"logprobs: {body.logprobs!r}; chat completions take true or false (top_logprobs: how many)"
        )
    if body.top_logprobs and not body.logprobs:
        raise InvalidArgument("top_logprobs: needs logprobs: true")
    logprobs = (body.top_logprobs or 0) if body.logprobs else None
    request = _request(body, models, body.max_completion_tokens or body.max_tokens, logprobs)
    for i, m in enumerate(body.messages):
        role = ROLES.get(m.role)
        if role is None:
            raise InvalidArgument(f"messages[{i}].role: {m.role!r} is not one of {', '.join(ROLES)}")
        request.chat.messages.append(pb.ChatMessage(role=role, content=text(m, i)))
    return request


def completion(body: CompletionRequest, models: Models) -> pb.GenerateRequest:
    """A text completion request as a GenerateRequest with ``prompt`` set."""
    prompt = body.prompt
    if isinstance(prompt, list):
        if len(prompt) != 1 or not isinstance(prompt[0], str):
            raise InvalidArgument("prompt: send one text (a list of one text is the same); token ids are not taken")
        prompt = prompt[0]
    if isinstance(body.logprobs, bool) or (body.logprobs is not None and not 0 <= body.logprobs <= 20):
        raise InvalidArgument(f"logprobs: {body.logprobs!r}; completions take how many alternatives, 0 to 20")
    if body.echo and body.logprobs is not None:
        raise InvalidArgument("echo: with logprobs the prompt's log-probabilities would be due too; ask for one")
    request = _request(body, models, body.max_tokens, body.logprobs)
    request.prompt = prompt
    return request
