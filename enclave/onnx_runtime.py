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

from enclave import onnx_graph
from enclave.deps import require

MODEL_FILE = "model.onnx"


def genai_config(root: Path) -> dict:
    """The artifact's ``genai_config.json`` (onnxruntime-genai's model and decoder settings) as a dict."""
    return json.loads((root / "genai_config.json").read_text())


class LogitsSession:
    """``model.onnx`` as a plain function from token ids to logits, optionally with one LoRA adapter
    applied unmerged (the graph's LoRA branches, ``enclave.onnx_lora``, as the serving engine runs it)."""

    def __init__(self, root: Path, threads: int | None = None, adapter: Path | None = None) -> None:
        ort = require("onnxruntime", "compress")
        if hasattr(ort, "disable_telemetry_events"):
            ort.disable_telemetry_events()  # Windows ETW events; nothing leaves the machine
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        dec = genai_config(root)["model"]["decoder"]
        self.kv_shape = (dec["num_key_value_heads"], dec["head_size"])
        self.past, self.present = onnx_graph.kv_names(dec, "past"), onnx_graph.kv_names(dec, "present")
        self.lora_inputs: dict[str, np.ndarray] = {}
        if adapter is None:
            self.session = ort.InferenceSession(str(root / MODEL_FILE), opts, providers=["CPUExecutionProvider"])
        else:
            from enclave import onnx_lora

            table = onnx_lora.LoraTable(onnx_lora.Dims.of(dec))
            table.add(onnx_lora.read_adapter(Path(adapter).name, Path(adapter)))
            graph = onnx_lora.add_lora(onnx_graph.load_graph(root / MODEL_FILE), table.projections(), table.ranks)
            self.session = onnx_graph.session_from_graph(graph, root, opts, ["CPUExecutionProvider"])
            self.lora_inputs = {k: np.ascontiguousarray(v) for k, v in table.feed(np.array([1])).items()}
        self.inputs = {i.name: i for i in self.session.get_inputs()}

    def _run(self, ids: list[int], past: list[np.ndarray] | None) -> tuple[np.ndarray, list[np.ndarray]]:
        """Logits (len(ids), vocab) of ``ids`` after ``past`` (one (1, H, P, D) per past input), and the new past."""
        done = 0 if past is None else past[0].shape[2]
        feed = {
            "input_ids": np.array([ids], dtype=np.int64),
            "attention_mask": np.ones((1, done + len(ids)), dtype=np.int64),
            **self.lora_inputs,
        }
        for i, name in enumerate(self.past):
            dtype = np.float16 if "float16" in self.inputs[name].type else np.float32
            feed[name] = past[i] if past is not None else np.zeros((1, *self.kv_shape[:1], 0, self.kv_shape[1]), dtype)
        if "position_ids" in self.inputs:
            feed["position_ids"] = np.arange(done, done + len(ids), dtype=np.int64)[None]
        out = self.session.run(["logits", *self.present], feed)
        return out[0][0].astype(np.float32), out[1:]

    def logits(self, ids: list[int]) -> np.ndarray:
        """Logits of shape (len(ids), vocab) for one sequence."""
        return self._run(ids, None)[0]

    def greedy(self, ids: list[int], new_tokens: int, eos_ids: set[int]) -> list[int]:
        """Greedy continuation of ``ids`` with a KV cache, up to ``new_tokens`` or an end-of-sequence token (kept)."""
        logits, past = self._run(ids, None)
        out: list[int] = []
        while len(out) < new_tokens:
            out.append(int(logits[-1].argmax()))
            if out[-1] in eos_ids:
                break
            logits, past = self._run(out[-1:], past)
        return out


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
