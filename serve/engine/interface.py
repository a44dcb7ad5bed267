"""The interfaces of the engine layer.

``Engine`` is what the rest of the server calls: admission submits jobs and cancels them, the model
table loads and unloads adapters and closes engines. Two implement it: the continuous-batching
``serve.engine.batching.StepEngine`` (over any ``StepModel``: onnxruntime, torch) and
``serve.backends.vllm.Engine`` (vLLM schedules on its own).

``StepModel`` and ``Batch`` are what a step-by-step backend offers ``StepEngine``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import numpy as np

from serve.job import Job


class Engine(Protocol):
    """Runs the jobs of one loaded model; events go back through ``Job.emit``."""

    backend: str  # the backend's name as ListModels reports it: onnxruntime, torch, vllm
    context_length: int  # tokens of prompt and completion one sequence may hold
    bundled: dict[str, Path]  # adapters that came inside the artifact (vLLM directories), loaded at start

    def submit(self, job: Job) -> None:
        """Queue a job; raises ``ResourceExhausted`` when the queue is full."""

    def cancel(self, job: Job) -> None:
        """Stop a job (its caller went away or its deadline passed); it emits nothing more."""

    def load(self) -> int:
        """Jobs queued or running (for least-loaded choice and the gauges)."""

    async def load_adapter(self, name: str, path: Path) -> None:
        """Make an adapter available to jobs under ``name``."""

    async def unload_adapter(self, name: str) -> None:
        """Forget an adapter; jobs that use it must have finished."""

    def close(self, wait: bool = True) -> None:
        """Stop taking jobs, end the running ones, and free the model."""


class Batch(Protocol):
    """The KV caches of the sequences being decoded together, one row each."""

    def add(self, row: Any) -> None:
        """Append a prefilled sequence as the last row."""

    def keep(self, rows: list[int]) -> None:
        """Keep only these rows, in this order (finished and cancelled ones leave)."""

    def step(self, tokens: list[int]) -> np.ndarray:
        """Feed one token per row; returns the next-token logits, shape (rows, vocab)."""


class StepModel(Protocol):
    """A model the engine drives one step at a time (onnxruntime, torch)."""

    backend: str
    context_length: int

    def prefill(self, prompt_ids: list[int], adapter: str | None) -> tuple[np.ndarray, Any]:
        """Run a prompt; returns its next-token logits (vocab,) and its row for ``Batch.add``."""

    def new_batch(self) -> Batch:
        """An empty batch; its rows may use different adapters."""

    def load_adapter(self, name: str, path) -> None:
        """Make an adapter available under ``name``."""

    def unload_adapter(self, name: str) -> None:
        """Forget an adapter."""


class ChunkedPrefill(Protocol):
    """What a ``StepModel`` may add so that ``StepEngine`` prefills a long prompt in chunks between
    decode steps, and fresh prompts side by side (onnxruntime has it; torch prefills whole)."""

    def begin(self, prompt_ids: list[int], adapter: str | None) -> Any:
        """A prompt to prefill; the state has ``remaining`` (tokens not run yet; a cached prefix is done)."""

    def prefill_chunk(self, prompts: list[Any], tokens: int) -> list[tuple[np.ndarray, Any] | None]:
        """Advance each prompt by up to ``tokens``; per prompt None, or, once done, what ``prefill`` returns."""
