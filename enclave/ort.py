"""Running an ONNX artifact (from `enclave compress export --format onnx`): full-sequence logits
(onnxruntime) and greedy decoding (onnxruntime-genai, the C++ generation loop with KV cache).

Used by the export check, the compress report and `enclave eval` (through ``OnnxCausalLM``,
which answers the two calls evaluation makes of a transformers model).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from enclave.deps import require

MODEL_FILE = "model.onnx"


def genai_config(root: Path) -> dict:
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


def perplexity(session: LogitsSession, ids: list[int], window: int = 512) -> float:
    """exp(mean NLL) over ``ids`` in non-overlapping windows (the same scheme as compress.text.perplexity)."""
    total, count = 0.0, 0
    for i in range(0, len(ids) - 1, window):
        chunk = ids[i : i + window + 1]
        if len(chunk) < 2:
            break
        logits = session.logits(chunk[:-1]).astype(np.float64)
        top = logits.max(-1, keepdims=True)
        logz = (top + np.log(np.exp(logits - top).sum(-1, keepdims=True)))[:, 0]
        total += float((logz - logits[np.arange(len(chunk) - 1), chunk[1:]]).sum())
        count += len(chunk) - 1
    return float(np.exp(total / max(count, 1)))


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
        params.set_search_options(do_sample=False, max_length=len(ids) + new_tokens, min_length=0 if stop_at_eos else len(ids) + new_tokens)
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


class OnnxCausalLM:
    """An ONNX artifact behind the part of the transformers model interface that evaluation uses:
    ``model(input_ids, attention_mask, logits_to_keep).logits`` and greedy ``model.generate``.

    Rows are run one at a time without their padding (right padding for the forward pass, left
    padding for generate, as `enclave eval` pads), so results do not depend on the batch.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.session = LogitsSession(self.root)
        self.generator = Generator(self.root)
        self.config = SimpleNamespace(max_position_embeddings=genai_config(self.root)["model"]["context_length"])

    def eval(self) -> OnnxCausalLM:
        return self

    def __call__(self, input_ids, attention_mask=None, logits_to_keep: int = 0, **_):
        import torch

        mask = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
        width = input_ids.size(1)
        rows = []
        for ids, m in zip(input_ids.tolist(), mask.tolist()):
            tokens = [t for t, keep in zip(ids, m) if keep]
            logits = torch.from_numpy(self.session.logits(tokens))
            full = torch.zeros(width, logits.size(-1))
            start = m.index(1) if 1 in m else 0
            full[start : start + len(tokens)] = logits
            rows.append(full[-logits_to_keep:] if logits_to_keep else full)
        return _Output(torch.stack(rows))

    def generate(self, input_ids, attention_mask=None, max_new_tokens: int = 32, pad_token_id: int = 0, **_):
        """Greedy continuations (generation stops at the model's end-of-sequence tokens)."""
        import torch

        mask = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
        new = []
        for ids, m in zip(input_ids.tolist(), mask.tolist()):
            tokens, _, _ = self.generator.greedy([t for t, keep in zip(ids, m) if keep], max_new_tokens)
            new.append(tokens)
        longest = max(map(len, new), default=0)
        tail = torch.full((input_ids.size(0), longest), pad_token_id, dtype=torch.long)
        for i, tokens in enumerate(new):
            tail[i, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
        return torch.cat([input_ids, tail], dim=1)


class _Output:
    def __init__(self, logits) -> None:
        self.logits = logits


def load_onnx(root: Path):
    """(OnnxCausalLM, tokenizer) for an ONNX artifact directory."""
    transformers = require("transformers", "torch")
    tokenizer = transformers.AutoTokenizer.from_pretrained(root, local_files_only=True)
    return OnnxCausalLM(root), tokenizer
