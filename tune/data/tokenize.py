"""Turning records into training examples: the base model's chat template, loss on the answer only."""

from __future__ import annotations

from dataclasses import dataclass

from enclave.errors import EnclaveError
from tune.data.records import Record

IGNORE = -100


@dataclass(frozen=True)
class Example:
    """Token ids and labels (-100 on prompt tokens, so only the answer is learned)."""

    input_ids: list[int]
    labels: list[int]
    group: str | None
    source: str

    @property
    def length(self) -> int:
        return len(self.input_ids)

    @property
    def answer_tokens(self) -> int:
        return sum(1 for t in self.labels if t != IGNORE)


def with_system(messages: list[dict], system: str | None) -> list[dict]:
    if system and messages[0]["role"] != "system":
        return [{"role": "system", "content": system}, *messages]
    return messages


def prompt_ids(tokenizer, messages: list[dict], system: str | None = None) -> list[int]:
    """Ids of the conversation up to the assistant's turn, generation prompt added."""
    if not tokenizer.chat_template:
        return tokenizer("\n".join(m["content"] for m in messages))["input_ids"]
    out = tokenizer.apply_chat_template(with_system(messages, system), add_generation_prompt=True, tokenize=True, return_dict=True)
    return list(out["input_ids"])


def encode(tokenizer, record: Record, system: str | None = None) -> Example:
    """Encode one record: prompt tokens masked, answer tokens and the end-of-turn token learned."""
    prompt = prompt_ids(tokenizer, record.messages[:-1], system)
    answer = tokenizer(record.answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    if tokenizer.chat_template:
        full = tokenizer.apply_chat_template(with_system(record.messages, system), tokenize=True, return_dict=True)["input_ids"]
        full = list(full)
        if full[: len(prompt)] != prompt:
            raise EnclaveError(f"{record.source}: the chat template does not extend the prompt with the answer; cannot mask the prompt")
        eos = [i for i, t in enumerate(full) if t == tokenizer.eos_token_id and i >= len(prompt)]
        answer = full[len(prompt) : eos[0] + 1] if eos else full[len(prompt) :]
    ids = prompt + answer
    return Example(ids, [IGNORE] * len(prompt) + answer, record.group, record.source)
