"""The OpenAI API's request bodies, as its clients send them (`openai` SDKs, LangChain, curl).

Fields are typed as OpenAI documents them: a wrong type is a 400 naming the field; fields this
server does not know are ignored, as OpenAI's API ignores them. Enclave's extras carry vLLM's
names (``top_k``, ``min_tokens``, ``repetition_penalty``). Checks of values against the server's
limits happen later, in ``serve.requests``, the same code gRPC requests go through.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class Body(BaseModel):
    """A request body: strict types, unknown fields ignored."""

    model_config = ConfigDict(extra="ignore", strict=True)


class TextPart(Body):
    """A content part of a message; only text parts are read."""

    type: str
    text: str | None = None


class Message(Body):
    """One chat message: ``content`` as text or as a list of text parts."""

    role: str
    content: str | list[TextPart] | None = None
    name: str | None = None


class StreamOptions(Body):
    include_usage: bool = False


class Sampling(Body):
    """The decoding fields shared by chat and text completions."""

    model: str
    max_tokens: int | None = Field(None, ge=0)
    temperature: float | None = None
    top_p: float | None = None
    n: int = Field(1, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=0, lt=2**64)
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logprobs: bool | int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    # Enclave's extras, named as vLLM names them
    top_k: int | None = Field(None, ge=-1)
    min_tokens: int = Field(0, ge=0)
    repetition_penalty: float | None = None
    min_p: float | None = None
    stop_token_ids: list[int] | None = None
    request_id: str | None = None


class ChatRequest(Sampling):
    """``POST /v1/chat/completions``."""

    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=0)
    top_logprobs: int | None = Field(None, ge=0, le=20)
    response_format: dict | None = None


class CompletionRequest(Sampling):
    """``POST /v1/completions``: ``prompt`` as text (a list of one text is the same)."""

    prompt: str | list[str] | list[int] | list[list[int]]
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = None


FINISH = {"stop": "stop", "stop_sequence": "stop", "length": "length", "context_limit": "length"}
"""The engine's finish reasons as OpenAI names them."""


class FeedbackBody(Body):
    """POST /v1/feedback (Enclave's own route): a reviewer's rating of one answer."""

    id: str
    """The answer's ``id`` as the API returned it (``chatcmpl-...``, ``cmpl-...``), or its request id."""
    choice: int = Field(0, ge=0)
    """Which choice of an answer with n > 1."""
    rating: str | int
    """``good`` or ``bad``, or a score from 1 (wrong) to 5 (right)."""
    correction: str = ""
    """The answer the model should have given (kept only where text capture is on)."""
    reason: str = ""
    """Why, in the reviewer's words (kept as the correction is)."""
