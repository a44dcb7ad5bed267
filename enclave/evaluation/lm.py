"""The model interface evaluation uses, and one implementation per engine.

A ``LanguageModel`` answers two questions: the log-probability of each next token of a sequence
(perplexity), and greedy continuations of prompts (task answers). Each engine is imported only
when a model of its kind is opened, so evaluating an ONNX artifact needs no torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np


class LanguageModel(Protocol):
    """What evaluation needs of a model, whatever runs it."""

    engine: str
    """The engine's name as reports show it (``torch``, ``onnxruntime``, ``vllm``)."""
    context_length: int
    """The longest sequence it takes."""

    def token_logprobs(self, ids: list[int]) -> np.ndarray:
        """log p(ids[t + 1] | ids[: t + 1]) for t = 0 .. len(ids) - 2, as float64, shape (len(ids) - 1,)."""
        ...

    def token_logprobs_many(self, seqs: list[list[int]]) -> list[np.ndarray]:
        """``token_logprobs`` of each sequence (an engine may batch them)."""
        ...

    def greedy(self, prompts: list[list[int]], max_new_tokens: int, eos_ids: set[int]) -> list[list[int]]:
        """The greedy continuation of each prompt, up to and without the first end-of-sequence token."""
        ...


def _logprobs_of(logits: np.ndarray, targets: list[int]) -> np.ndarray:
    """log-softmax of each row of ``logits`` (float64) at its target."""
    logits = logits.astype(np.float64)
    top = logits.max(-1, keepdims=True)
    logz = (top + np.log(np.exp(logits - top).sum(-1, keepdims=True)))[:, 0]
    return logits[np.arange(len(targets)), targets] - logz


def _cut(tokens: list[int], eos_ids: set[int]) -> list[int]:
    for i, t in enumerate(tokens):
        if t in eos_ids:
            return tokens[:i]
    return tokens


class TorchLM:
    """A transformers causal LM (fp32 checkpoints, adapters applied with PEFT, GPTQ models)."""

    engine = "torch"

    def __init__(self, model, pad_id: int = 0, batch_size: int = 16) -> None:
        self.model, self.pad_id, self.batch_size = model, pad_id, batch_size
        self.context_length = int(getattr(model.config, "max_position_embeddings", 0) or 1 << 30)

    def token_logprobs(self, ids: list[int]) -> np.ndarray:
        """Log-probability of each next token of one sequence, in one forward pass; empty below two ids."""
        import torch

        if len(ids) < 2:
            return np.zeros(0)
        with torch.no_grad():
            logits = self.model(input_ids=torch.tensor([ids[:-1]], dtype=torch.long)).logits[0].float().numpy()
        return _logprobs_of(logits, ids[1:])

    def token_logprobs_many(self, seqs: list[list[int]], max_tokens: int = 4096) -> list[np.ndarray]:
        """Batched with right padding (a row's real tokens never attend to the padding after
        them), at most ``max_tokens`` padded tokens per forward pass."""
        import torch

        out: list[np.ndarray] = [np.zeros(0)] * len(seqs)
        order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
        self.model.eval()
        i = 0
        while i < len(order):
            rows = [order[i]]
            while i + len(rows) < len(order) and len(seqs[order[i + len(rows)]]) * (len(rows) + 1) <= max_tokens:
                rows.append(order[i + len(rows)])
            width = max(len(seqs[r]) for r in rows) - 1
            ids = torch.full((len(rows), max(width, 1)), self.pad_id, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for j, r in enumerate(rows):
                ids[j, : len(seqs[r]) - 1] = torch.tensor(seqs[r][:-1], dtype=torch.long)
                mask[j, : len(seqs[r]) - 1] = 1
            with torch.no_grad():
                logits = self.model(input_ids=ids, attention_mask=mask).logits.float().numpy()
            for j, r in enumerate(rows):
                n = len(seqs[r]) - 1
                out[r] = _logprobs_of(logits[j, :n], seqs[r][1:]) if n > 0 else np.zeros(0)
            i += len(rows)
        return out

    def greedy(self, prompts: list[list[int]], max_new_tokens: int, eos_ids: set[int]) -> list[list[int]]:
        """Batched with left padding (rows' answers do not depend on their batch: fp32, masked)."""
        import torch

        out: list[list[int]] = []
        self.model.eval()
        for i in range(0, len(prompts), self.batch_size):
            chunk = prompts[i : i + self.batch_size]
            width = max(map(len, chunk))
            ids = torch.full((len(chunk), width), self.pad_id, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for j, p in enumerate(chunk):
                ids[j, width - len(p) :] = torch.tensor(p)
                mask[j, width - len(p) :] = 1
            with torch.no_grad():
                new = self.model.generate(
                    input_ids=ids,
                    attention_mask=mask,
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    eos_token_id=sorted(eos_ids) or None,
                    pad_token_id=self.pad_id,
                )[:, width:]
            out += [_cut(row.tolist(), eos_ids) for row in new]
        return out


class OnnxLM:
    """An ONNX artifact: onnxruntime for log-probabilities, onnxruntime-genai's C++ loop for greedy
    decoding; with a LoRA adapter (applied unmerged, as the serving engine runs it) both come from
    onnxruntime with the graph's LoRA branches (greedy with a KV cache)."""

    engine = "onnxruntime"

    def __init__(self, root: Path, threads: int | None = None, adapter: Path | None = None) -> None:
        from enclave.onnx_runtime import Generator, LogitsSession, genai_config

        self.root = Path(root)
        self.session = LogitsSession(self.root, threads, adapter)
        self._generator, self._make_generator = None, lambda: Generator(self.root)
        self.adapter = adapter
        self.context_length = int(genai_config(self.root)["model"]["context_length"])

    def token_logprobs(self, ids: list[int]) -> np.ndarray:
        """Log-probability of each next token of one sequence, from the full-sequence logits of ``model.onnx``."""
        return _logprobs_of(self.session.logits(ids[:-1]), ids[1:])

    def token_logprobs_many(self, seqs: list[list[int]]) -> list[np.ndarray]:
        """``token_logprobs`` of each sequence, one sequence at a time (no batching)."""
        return [self.token_logprobs(ids) for ids in seqs]

    def greedy(self, prompts: list[list[int]], max_new_tokens: int, eos_ids: set[int]) -> list[list[int]]:
        """The greedy continuation of each prompt, one at a time, up to and without the first end-of-sequence token.

        The onnxruntime-genai generator is created on the first call, so scoring log-probabilities
        alone never loads it.
        """
        if self.adapter is not None:
            return [_cut(self.session.greedy(p, max_new_tokens, eos_ids), eos_ids) for p in prompts]
        if self._generator is None:
            self._generator = self._make_generator()
        return [_cut(self._generator.greedy(p, max_new_tokens)[0], eos_ids) for p in prompts]


class VllmLM:
    """A vLLM engine (``vllm.LLM``), where vLLM is installed: prompt log-probabilities and greedy decoding."""

    engine = "vllm"

    def __init__(self, root: Path, adapter: Path | None = None, memory_share: float = 0.3) -> None:
        from enclave.deps import require

        vllm = require("vllm", "vllm")
        self.vllm = vllm
        self.llm = vllm.LLM(
            model=str(root),
            gpu_memory_utilization=memory_share,
            enable_lora=adapter is not None,
            trust_remote_code=False,
            disable_log_stats=True,
        )
        self.lora = None
        if adapter is not None:
            from vllm.lora.request import LoRARequest

            self.lora = LoRARequest(Path(adapter).name, 1, str(adapter))
        self.context_length = int(self.llm.llm_engine.model_config.max_model_len)

    def _prompt(self, ids: list[int]):
        return {"prompt_token_ids": ids}

    def token_logprobs(self, ids: list[int]) -> np.ndarray:
        """Log-probability of each next token of one sequence, from vLLM's prompt log-probabilities."""
        params = self.vllm.SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=0.0)
        out = self.llm.generate([self._prompt(ids)], params, lora_request=self.lora, use_tqdm=False)[0]
        # prompt_logprobs[t] holds the prompt token t's own log-probability (None for the first).
        return np.array([out.prompt_logprobs[t][ids[t]].logprob for t in range(1, len(ids))], dtype=np.float64)

    def token_logprobs_many(self, seqs: list[list[int]]) -> list[np.ndarray]:
        """``token_logprobs`` of each sequence, all submitted in one call for vLLM to batch."""
        params = self.vllm.SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=0.0)
        outs = self.llm.generate([self._prompt(ids) for ids in seqs], params, lora_request=self.lora, use_tqdm=False)
        return [
            np.array([o.prompt_logprobs[t][ids[t]].logprob for t in range(1, len(ids))], dtype=np.float64)
            for o, ids in zip(outs, seqs)
        ]

    def greedy(self, prompts: list[list[int]], max_new_tokens: int, eos_ids: set[int]) -> list[list[int]]:
        """The greedy continuation of each prompt, all in one call, up to and without the first end-of-sequence id."""
        params = self.vllm.SamplingParams(max_tokens=max_new_tokens, temperature=0.0, stop_token_ids=sorted(eos_ids))
        outs = self.llm.generate([self._prompt(p) for p in prompts], params, lora_request=self.lora, use_tqdm=False)
        return [_cut(list(o.outputs[0].token_ids), eos_ids) for o in outs]
