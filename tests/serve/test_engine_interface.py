"""Both engines implement serve.engine.interface.Engine: the batching engine over step-by-step
backends and the vLLM backend, which schedules on its own (imported without vLLM installed)."""

from __future__ import annotations

import inspect

from serve.backends.vllm import Engine as VllmEngine
from serve.engine.batching import StepEngine
from serve.engine.interface import Engine

METHODS = ("submit", "cancel", "load", "load_adapter", "unload_adapter", "close")


def test_the_protocol_declares_the_engine_operations():
    declared = {name for name, value in vars(Engine).items() if callable(value) and not name.startswith("_")}
    assert declared == set(METHODS)
    assert set(Engine.__annotations__) == {"backend", "context_length", "bundled"}


def test_both_engines_implement_it_with_the_same_signatures():
    for cls in (StepEngine, VllmEngine):
        for name in METHODS:
            want, got = inspect.signature(getattr(Engine, name)), inspect.signature(getattr(cls, name))
            assert list(got.parameters) == list(want.parameters), f"{cls.__name__}.{name}{got} != Engine.{name}{want}"
            assert inspect.iscoroutinefunction(getattr(cls, name)) == inspect.iscoroutinefunction(
                getattr(Engine, name)
            ), name


def test_the_onnxruntime_backend_prefills_in_chunks_as_declared():
    from serve.backends.ort import Backend
    from serve.engine.interface import ChunkedPrefill

    for name in ("begin", "prefill_chunk"):
        want, got = inspect.signature(getattr(ChunkedPrefill, name)), inspect.signature(getattr(Backend, name))
        assert list(got.parameters)[1:] == list(want.parameters)[1:], f"Backend.{name}{got} != {want}"
