"""Turning records into training examples: the base model's chat template, loss on the answer only."""

from __future__ import annotations

from dataclasses import dataclass

from enclave.chat import prompt_and_answer, prompt_ids, with_system
from tune.data.records import Record

__all__ = ["IGNORE", "Example", "encode", "prompt_ids", "with_system"]

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


def encode(tokenizer, record: Record, system: str | None = None) -> Example:
    """Encode one record: prompt tokens masked, answer tokens and the end-of-turn token learned."""
    prompt, answer = prompt_and_answer(tokenizer, record.messages, system, where=record.source)
    return Example(prompt + answer, [IGNORE] * len(prompt) + answer, record.group, record.source)
