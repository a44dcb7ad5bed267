"""Running an ONNX artifact (from `enclave compress export --format onnx`): full-sequence logits
(onnxruntime) and greedy decoding (onnxruntime-genai, the C++ generation loop with KV cache).

Used by the export check and the shared evaluation (``enclave.evaluation.lm.OnnxLM``), which
the compress report and `enclave eval` score ONNX artifacts with.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from enclave.deps import require

MODEL_FILE = "model.onnx"


def genai_config(root: Path) -> dict:
    """The artifact's ``genai_config.json`` (onnxruntime-genai's model and decoder settings) as a dict."""
    return json.loads((root / "genai_config.json").read_text())


class LogitsSession:
    """``model.onnx`` as a plain function from token ids to logits (empty KV cache)."""

    def __init__(self, root: Path, threads: int | None = None) -> None:
        ort = require("onnxruntime", "compress")
        if hasattr(ort, "disable_telemetry_events"):
            ort.disable_telemetry_events()  # Windows ETW events; nothing leaves the machine
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(root / MODEL_FILE), opts, providers=["CPUExecutionProvider"])
        dec = genai_config(root)["model"]["decoder"]
        self.kv_shape = (dec["num_key_value_heads"], dec["head_size"])
        self.inputs = {i.name: i for i in self.session.get_inputs()}

    def logits(self, ids: list[int]) -> np.ndarray:
        """Logits of shape (len(ids), vocab) for one sequence."""
        feed = {"input_ids": np.array([ids], dtype=np.int64), "attention_mask": np.ones((1, len(ids)), dtype=np.int64)}
        for name, meta in self.inputs.items():
            if name.startswith("past_key_values"):
                dtype = np.float16 if "float16" in meta.type else np.float32
                feed[name] = np.zeros((1, self.kv_shape[0], 0, self.kv_shape[1]), dtype=dtype)
            elif name == "position_ids":
                feed[name] = np.arange(len(ids), dtype=np.int64)[None]
        return self.session.run(["logits"], feed)[0][0].astype(np.float32)


def genai():
    """onnxruntime_genai, with its telemetry events off (Enclave sends nothing anywhere)."""
    og = require("onnxruntime_genai", "compress")
    if hasattr(og, "disable_telemetry_events"):
        og.disable_telemetry_events()
    return og


class Generator:
    """Greedy decoding with onnxruntime-genai."""

    def __init__(self, root: Path) -> None:
        self.og = genai()
        self.model = self.og.Model(str(root))

    def greedy(self, ids: list[int], new_tokens: int, stop_at_eos: bool = True) -> tuple[list[int], float, float]:
        """(new token ids, seconds to the first new token, seconds for the rest)."""
        params = self.og.GeneratorParams(self.model)
        params.set_search_options(
            do_sample=False, max_length=len(ids) + new_tokens, min_length=0 if stop_at_eos else len(ids) + new_tokens
        )
        started = time.perf_counter()
        gen = self.og.Generator(self.model, params)
        gen.append_tokens([ids])
        out: list[int] = []
        first = 0.0
        while not gen.is_done():
            gen.generate_next_token()
            out.append(int(gen.get_next_tokens()[0]))
            if len(out) == 1:
                first = time.perf_counter() - started
        return out, first, time.perf_counter() - started - first
