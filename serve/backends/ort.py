"""ONNX artifacts (`enclave compress export --format onnx`) on ONNX Runtime.

The exported graph uses GroupQueryAttention, which reads each row's length from the attention
mask and writes the new key/value at that row's own position; so rows of different lengths
share one right-padded KV buffer (batch, kv_heads, longest, head_dim) and a decode step is one
``session.run`` for the whole batch. The CUDA execution provider is used when onnxruntime-gpu
is installed. Adapters are not supported here: serve them with the torch or vLLM backend.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from serve.errors import FailedPrecondition

BACKEND = "onnxruntime"


def providers(ort) -> list[str]:
    """CUDA when onnxruntime-gpu offers it, else CPU."""
    available = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]


class Backend:
    """One ONNX artifact, run step by step by serve.engine."""

    backend = BACKEND

    def __init__(self, root: Path, threads: int | None = None) -> None:
        import onnxruntime as ort

        if hasattr(ort, "disable_telemetry_events"):
            ort.disable_telemetry_events()
        cfg = json.loads((root / "genai_config.json").read_text())["model"]
        dec = cfg["decoder"]
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(root / dec.get("filename", "model.onnx")), opts, providers=providers(ort))
        names = dec["inputs"], dec["outputs"]
        self.layers = dec["num_hidden_layers"]
        self.past = [names[0][k] % i for i in range(self.layers) for k in ("past_key_names", "past_value_names")]
        self.present = [names[1][k] % i for i in range(self.layers) for k in ("present_key_names", "present_value_names")]
        self.logits_name = names[1]["logits"]
        meta = {i.name: i for i in self.session.get_inputs()}
        self.dtype = np.float16 if "float16" in meta[self.past[0]].type else np.float32
        self.kv = (dec["num_key_value_heads"], dec["head_size"])
        self.context_length = int(cfg["context_length"])
        self.position_ids = "position_ids" in meta

    def _run(self, tokens: np.ndarray, lengths: np.ndarray, past: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        """tokens (B, T) appended to rows whose total lengths become ``lengths``; past (B, H, P, D) each."""
        width = int(lengths.max())
        mask = (np.arange(width)[None, :] < lengths[:, None]).astype(np.int64)  # (B, width)
        feed = {"input_ids": tokens, "attention_mask": mask, **dict(zip(self.past, past))}
        if self.position_ids:
            feed["position_ids"] = (lengths[:, None] - tokens.shape[1] + np.arange(tokens.shape[1])[None, :]).astype(np.int64)
        out = self.session.run([self.logits_name, *self.present], feed)
        return out[0][:, -1, :], out[1:]

    def prefill(self, prompt_ids: list[int], adapter: str | None):
        if adapter:
            raise FailedPrecondition("adapter: the onnxruntime backend runs ONNX artifacts without adapters; "
                                     "merge the adapter before export, or serve the checkpoint with the torch or vLLM backend")  # fmt: skip
        empty = [np.zeros((1, *self.kv[:1], 0, self.kv[1]), self.dtype) for _ in self.past]
        logits, present = self._run(np.array([prompt_ids], np.int64), np.array([len(prompt_ids)]), empty)
        return logits[0], (present, len(prompt_ids))

    def new_batch(self) -> OrtBatch:
        return OrtBatch(self)

    def load_adapter(self, name: str, path: Path) -> None:
        raise FailedPrecondition(f"adapter {name!r}: the onnxruntime backend does not run adapters; merge it before "
                                 "export (`enclave compress merge`), or serve the base checkpoint (torch) or a vLLM artifact")  # fmt: skip

    def unload_adapter(self, name: str) -> None:
        raise FailedPrecondition(f"adapter {name!r}: the onnxruntime backend has no adapters loaded")


class OrtBatch:
    """Right-padded KV buffers for the running rows."""

    def __init__(self, model: Backend) -> None:
        self.model = model
        self.kv: list[np.ndarray] | None = None  # per past input: (B, H, P, D)
        self.lengths = np.zeros(0, np.int64)  # tokens in each row's cache

    def add(self, row) -> None:
        present, length = row
        if self.kv is None:
            self.kv, self.lengths = list(present), np.array([length], np.int64)
            return
        width = max(self.kv[0].shape[2], present[0].shape[2])
        self.kv = [np.concatenate([_pad(a, width), _pad(b, width)]) for a, b in zip(self.kv, present)]
        self.lengths = np.append(self.lengths, length)

    def keep(self, rows: list[int]) -> None:
        if not rows:
            self.kv, self.lengths = None, np.zeros(0, np.int64)
            return
        self.lengths = self.lengths[rows]
        width = int(self.lengths.max())  # trim columns no remaining row uses
        self.kv = [a[rows, :, :width] for a in self.kv]

    def step(self, tokens: list[int]) -> np.ndarray:
        self.lengths = self.lengths + 1
        logits, self.kv = self.model._run(np.array(tokens, np.int64)[:, None], self.lengths, self.kv)
        return logits


def _pad(a: np.ndarray, width: int) -> np.ndarray:
    if a.shape[2] == width:
        return a
    pad = np.zeros((a.shape[0], a.shape[1], width - a.shape[2], a.shape[3]), a.dtype)
    return np.concatenate([a, pad], axis=2)
