"""Start the engine of one artifact: its backend is chosen by the artifact's kind (``serve.backends``).

A backend with its own scheduler (vLLM) brings its own ``Engine``; any other backend is a
``StepModel`` that the continuous-batching ``StepEngine`` drives.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from serve.backends import backend_module, choose
from serve.engine.batching import StepEngine
from serve.engine.interface import Engine


async def open_engine(kind: str, root: Path, tokenizer, cfg, name: str, gauges) -> Engine:
    """Load an artifact on its backend, warm it up, and return a started engine."""
    backend = choose(kind)
    module = backend_module(backend)
    if hasattr(module, "Engine"):  # a backend with its own scheduler (vLLM)
        engine = module.Engine(
            root,
            tokenizer,
            cfg.scheduler,
            name,
            gauges,
            memory_share=cfg.vllm_memory_share,
            tensor_parallel_size=cfg.vllm_tensor_parallel_size,
        )
        await engine.start()
        return engine
    model = await asyncio.to_thread(module.Backend, root, cfg.threads, cfg.prefix_cache)
    warm = tokenizer.encode("Hello") or [0]
    await asyncio.to_thread(model.prefill, warm, None)  # first run allocates and picks kernels
    engine = StepEngine(model, tokenizer, cfg.scheduler, name, gauges)
    engine.start()
    return engine
