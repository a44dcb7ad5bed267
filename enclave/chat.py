"""A record as the model sees it: the chat template's prompt, and the answer tokens after it.

One definition for tuning (which learns the answer tokens) and for evaluation in every stage
(which scores them and generates from the prompt).
"""

from __future__ import annotations

from enclave.errors import EnclaveError


def with_system(messages: list[dict], system: str | None) -> list[dict]:
    """The messages with a system message first, unless they already start with one."""
    if system and messages[0]["role"] != "system":
        return [{"role": "system", "content": system}, *messages]
    return messages


def prompt_ids(tokenizer, messages: list[dict], system: str | None = None) -> list[int]:
    """Ids of the conversation up to the assistant's turn, generation prompt added."""
    if not tokenizer.chat_template:
        return tokenizer("\n".join(m["content"] for m in messages))["input_ids"]
    out = tokenizer.apply_chat_template(
        with_system(messages, system), add_generation_prompt=True, tokenize=True, return_dict=True
    )
    return list(out["input_ids"])


def prompt_and_answer(
    tokenizer, messages: list[dict], system: str | None = None, where: str = "record"
) -> tuple[list[int], list[int]]:
    """(prompt ids, answer ids): the answer is what the template puts after the prompt, through its end-of-turn token.

    Raises:
        EnclaveError: the chat template does not extend the prompt with the answer (the prompt cannot be masked).
    """
    prompt = prompt_ids(tokenizer, messages[:-1], system)
    answer = tokenizer(messages[-1]["content"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    if tokenizer.chat_template:
        full = list(
            tokenizer.apply_chat_template(with_system(messages, system), tokenize=True, return_dict=True)["input_ids"]
        )
        if full[: len(prompt)] != prompt:
            raise EnclaveError(
                f"{where}: the chat template does not extend the prompt with the answer; cannot mask the prompt"
            )
        eos = [i for i, t in enumerate(full) if t == tokenizer.eos_token_id and i >= len(prompt)]
        answer = full[len(prompt) : eos[0] + 1] if eos else full[len(prompt) :]
    return prompt, answer
