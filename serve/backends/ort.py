"""ONNX artifacts (`enclave compress export --format onnx`) on ONNX Runtime.

The exported graph uses GroupQueryAttention, which reads each row's length from the attention
mask and writes the new key/value at that row's own position; so rows of different lengths
share one right-padded KV buffer (batch, kv_heads, capacity, head_dim) and a decode step is one
run of the session for the whole batch. On CPU the buffer is preallocated and updated in place
(IO binding); the CUDA execution provider, used when onnxruntime-gpu is installed, gets the
cache as inputs and returns it grown.

The graph is rewritten in memory at load (``serve.backends.onnx_graph``) so that the output layer
runs only at the position each row samples from, not at every prompt position; and, while LoRA
adapters are loaded, so that each adapted projection has a gathered LoRA branch
(``serve.backends.onnx_lora``): rows of different adapters, and of the base, share one step.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from serve.backends import onnx_graph, onnx_lora
from serve.config import PrefixCacheSettings
from serve.engine.prefix_cache import PrefixCache
from serve.errors import FailedPrecondition

BACKEND = "onnxruntime"


def providers(ort) -> list[str]:
    """CUDA when onnxruntime-gpu offers it, else CPU."""
    available = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]


class Backend:
    """One ONNX artifact, run step by step by serve.engine.batching.StepEngine (a ``StepModel``)."""

    backend = BACKEND

    def __init__(self, root: Path, threads: int | None = None, prefix_cache: PrefixCacheSettings | None = None) -> None:
        import onnxruntime as ort

        if hasattr(ort, "disable_telemetry_events"):
            ort.disable_telemetry_events()
        cfg = json.loads((root / "genai_config.json").read_text())["model"]
        dec = cfg["decoder"]
        self.root, self.threads, self.providers = root, threads, providers(ort)
        self.graph_file = root / dec.get("filename", "model.onnx")
        names = dec["inputs"], dec["outputs"]
        self.logits_name = names[1]["logits"]
        head = dec["head_size"]
        dims = onnx_lora.Dims(q=dec["num_attention_heads"] * head, kv=dec["num_key_value_heads"] * head)
        self.lora = onnx_lora.LoraTable(dims)
        self.generation = 0  # bumped when the session or the adapters' inputs change: batches rebind
        self._build()
        self.layers = dec["num_hidden_layers"]
        self.past = [names[0][k] % i for i in range(self.layers) for k in ("past_key_names", "past_value_names")]
        self.present = [
            names[1][k] % i for i in range(self.layers) for k in ("present_key_names", "present_value_names")
        ]
        meta = {i.name: i for i in self.session.get_inputs()}
        self.dtype = np.float16 if "float16" in meta[self.past[0]].type else np.float32
        self.kv = (dec["num_key_value_heads"], dec["head_size"])
        self.context_length = int(cfg["context_length"])
        self.position_ids = "position_ids" in meta
        self.vocab = int(cfg["vocab_size"])
        on = prefix_cache is not None and prefix_cache.enabled and prefix_cache.max_bytes > 0
        self.prefix_cache = PrefixCache(prefix_cache.block_tokens, prefix_cache.max_bytes) if on else None

    def _build(self) -> None:
        """(Re)create the session over the rewritten graph: sampled logits, LoRA branches for the loaded adapters."""
        import onnxruntime as ort

        opts = ort.SessionOptions()
        if self.threads:
            opts.intra_op_num_threads = self.threads
        graph = onnx_graph.load_graph(self.graph_file)
        onnx_graph.sampled_logits_only(graph, self.logits_name)
        onnx_lora.add_lora(graph, self.lora.projections(), self.lora.ranks)
        self.session = onnx_graph.session_from_graph(graph, self.root, opts, self.providers)
        self.generation += 1

    def lora_feed(self, slots: np.ndarray) -> dict[str, np.ndarray]:
        """The adapter inputs of a run whose rows use these slots (none while no adapter is loaded)."""
        if not self.lora.active:
            return {}
        return {**self.lora.masks(slots), **self.lora.inputs}

    def _run(
        self, tokens: np.ndarray, lengths: np.ndarray, past: list[np.ndarray], slots: np.ndarray | None = None
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        """tokens (B, T) appended to rows whose total lengths become ``lengths``; past (B, H, P, D) each."""
        width = int(lengths.max())
        mask = (np.arange(width)[None, :] < lengths[:, None]).astype(np.int64)  # (B, width)
        sampled = np.full(len(tokens), tokens.shape[1] - 1, np.int64)  # each row's last new token
        feed = {
            "input_ids": tokens,
            "attention_mask": mask,
            onnx_graph.SAMPLED_INDEX: sampled,
            **dict(zip(self.past, past)),
            **self.lora_feed(np.zeros(len(tokens), np.int64) if slots is None else slots),
        }
        if self.position_ids:
            feed["position_ids"] = (lengths[:, None] - tokens.shape[1] + np.arange(tokens.shape[1])[None, :]).astype(
                np.int64
            )
        out = self.session.run([self.logits_name, *self.present], feed)
        return out[0][:, 0, :], out[1:]

    def prefill(self, prompt_ids: list[int], adapter: str | None):
        slot = np.array([self.lora.slot(adapter)], np.int64)
        cache = self.prefix_cache
        cached, blocks = cache.lookup(prompt_ids, adapter) if cache is not None else (0, [])
        if blocks:  # the cached prefix's KV, one (1, H, cached, D) array per past input
            past = [np.concatenate([b[i] for b in blocks], axis=1)[None] for i in range(len(self.past))]
        else:
            past = [np.zeros((1, self.kv[0], 0, self.kv[1]), self.dtype) for _ in self.past]
        tokens = np.array([prompt_ids[cached:]], np.int64)
        logits, present = self._run(tokens, np.array([len(prompt_ids)]), past, slot)
        if cache is not None:
            cache.store(prompt_ids, adapter, lambda start, end: [p[0, :, start:end].copy() for p in present])
        return logits[0], (present, len(prompt_ids), int(slot[0]))

    def new_batch(self) -> OrtBatch | CopyBatch:
        on_cpu = self.session.get_providers()[0] == "CPUExecutionProvider"
        return OrtBatch(self) if on_cpu else CopyBatch(self)

    def load_adapter(self, name: str, path: Path) -> None:
        """Stack a LoRA adapter into a free slot; the graph gains branches for projections it adapts first."""
        try:
            weights = onnx_lora.read_adapter(name, path)
        except onnx_lora.AdapterError as exc:
            raise FailedPrecondition(f"{exc}; serve it on the torch backend, or merge it before export") from None
        deep = max((layer for layer, _ in weights.weights), default=-1)
        if deep >= self.layers:
            raise FailedPrecondition(f"adapter {name}: adapts layer {deep}, but this model has {self.layers} layers")
        before = self.lora.projections()
        self.lora.add(weights)
        self._changed(before)

    def unload_adapter(self, name: str) -> None:
        """Free an adapter's slot (the engine calls this once no request uses it)."""
        before = self.lora.projections()
        self.lora.remove(name)
        if self.prefix_cache is not None:
            self.prefix_cache.clear()  # a later adapter of the same name must not reuse this one's KV
        self._changed(before)

    def _changed(self, before: set) -> None:
        if self.lora.projections() != before:
            self._build()  # new or fewer branches: a new session (the weights file is read again, not copied)
        else:
            self.generation += 1  # same graph, new stacked inputs


class OrtBatch:
    """The running rows' KV caches in preallocated buffers that the graph updates in place.

    Each past/present pair is bound (IO binding) to one buffer of shape (rows, kv_heads,
    capacity, head_dim): GroupQueryAttention sees the same pointer for input and output and
    writes the new key/value at each row's own position, so a decode step copies no cache.
    Rows and capacity grow by doubling (a long row makes every row's slot that long, as in any
    rectangular cache); a finished row is replaced by moving the later ones up; an empty batch
    frees the buffers.
    """

    initial_capacity = 256  # tokens per row at first; doubled as rows grow

    def __init__(self, model: Backend) -> None:
        self.model = model
        self.kv: list[np.ndarray] = []  # per past input: (row capacity, H, capacity, D)
        self.lengths = np.zeros(0, np.int64)  # tokens in each row's cache
        self.slots = np.zeros(0, np.int64)  # each row's adapter slot (0: the base)
        self.generation = 0  # the model's generation the binding was made for
        self.binding = None  # an io_binding for the current rows and capacity
        self.logits = np.zeros(0, np.float32)

    @property
    def rows(self) -> int:
        return len(self.lengths)

    def _reserve(self, rows: int, length: int) -> None:
        """Make room for ``rows`` rows of ``length`` tokens (doubling, at most the context)."""
        have_rows, have_len = (self.kv[0].shape[0], self.kv[0].shape[2]) if self.kv else (0, 0)
        if rows <= have_rows and length <= have_len:
            return
        new_rows = have_rows if rows <= have_rows else max(rows, 2 * have_rows)
        new_len = (
            have_len
            if length <= have_len
            else min(max(length, 2 * have_len, self.initial_capacity), max(length, self.model.context_length))
        )
        heads, dim = self.model.kv
        grown = []
        for old in self.kv or [None] * len(self.model.past):
            new = np.zeros((new_rows, heads, new_len, dim), self.model.dtype)
            if old is not None and self.rows:
                new[: self.rows, :, :have_len] = old[: self.rows]
            grown.append(new)
        self.kv, self.binding = grown, None

    def add(self, row) -> None:
        present, length, slot = row
        self._reserve(self.rows + 1, length + 1)
        i = self.rows
        for buf, p in zip(self.kv, present):  # positions past a row's length are never read
            buf[i, :, :length] = p[0, :, :length]
        self.lengths = np.append(self.lengths, length)
        self.slots = np.append(self.slots, slot)
        self.binding = None

    def keep(self, rows: list[int]) -> None:
        if not rows:  # an idle server holds no cache
            self.kv, self.lengths, self.binding = [], np.zeros(0, np.int64), None
            self.slots = np.zeros(0, np.int64)
            return
        if rows == sorted(rows):  # move later rows up, one at a time (none if only the last left)
            for new, old in enumerate(rows):
                if new != old:
                    length = int(self.lengths[old])
                    for buf in self.kv:
                        buf[new, :, :length] = buf[old, :, :length]
        else:
            for buf in self.kv:
                buf[: len(rows)] = buf[rows]
        self.lengths = self.lengths[rows]
        self.slots = self.slots[rows]
        self.binding = None

    def _bind(self):
        m, rows = self.model, self.rows
        io = m.session.io_binding()
        heads, capacity, dim = self.kv[0].shape[1:]
        shape = (rows, heads, capacity, dim)
        for past, present, buf in zip(m.past, m.present, self.kv):
            io.bind_input(past, "cpu", 0, m.dtype, shape, buf.ctypes.data)
            io.bind_output(present, "cpu", 0, m.dtype, shape, buf.ctypes.data)
        self.logits = np.zeros((rows, 1, m.vocab), np.float32)
        io.bind_output(m.logits_name, "cpu", 0, np.float32, self.logits.shape, self.logits.ctypes.data)
        if m.lora.active:  # the stacked adapters, by address (the table keeps them until they change)
            for name, array in m.lora.inputs.items():
                io.bind_input(name, "cpu", 0, np.float32, array.shape, array.ctypes.data)
        self.generation = m.generation
        return io

    def step(self, tokens: list[int]) -> np.ndarray:
        m = self.model
        self.lengths = self.lengths + 1
        width = int(self.lengths.max())
        self._reserve(self.rows, width)
        if self.binding is None or self.generation != m.generation:
            self.binding = self._bind()
        io = self.binding
        # bound by address: these arrays must live until the run returns
        ids = np.array(tokens, np.int64)[:, None]
        mask = (np.arange(width)[None, :] < self.lengths[:, None]).astype(np.int64)
        positions = (self.lengths - 1)[:, None].astype(np.int64)
        io.bind_cpu_input("input_ids", ids)
        io.bind_cpu_input("attention_mask", mask)
        io.bind_cpu_input(onnx_graph.SAMPLED_INDEX, np.zeros(self.rows, np.int64))  # one new token per row
        if m.lora.active:
            for name, mask in m.lora.masks(self.slots).items():
                io.bind_cpu_input(name, mask)
        if m.position_ids:
            io.bind_cpu_input("position_ids", positions)
        m.session.run_with_iobinding(io)
        return self.logits[:, -1, :].copy()


class CopyBatch:
    """The cache passed in and returned grown at every step (devices other than the CPU, where
    the buffers cannot be bound by host address)."""

    def __init__(self, model: Backend) -> None:
        self.model = model
        self.kv: list[np.ndarray] | None = None  # per past input: (B, H, P, D)
        self.lengths = np.zeros(0, np.int64)
        self.slots = np.zeros(0, np.int64)

    def add(self, row) -> None:
        present, length, slot = row
        if self.kv is None:
            self.kv, self.lengths, self.slots = list(present), np.array([length], np.int64), np.array([slot], np.int64)
            return
        width = max(self.kv[0].shape[2], present[0].shape[2])
        self.kv = [np.concatenate([_pad(a, width), _pad(b, width)]) for a, b in zip(self.kv, present)]
        self.lengths = np.append(self.lengths, length)
        self.slots = np.append(self.slots, slot)

    def keep(self, rows: list[int]) -> None:
        if not rows:
            self.kv, self.lengths, self.slots = None, np.zeros(0, np.int64), np.zeros(0, np.int64)
            return
        self.lengths = self.lengths[rows]
        self.slots = self.slots[rows]
        width = int(self.lengths.max())  # trim columns no remaining row uses
        self.kv = [a[rows, :, :width] for a in self.kv]

    def step(self, tokens: list[int]) -> np.ndarray:
        self.lengths = self.lengths + 1
        logits, self.kv = self.model._run(np.array(tokens, np.int64)[:, None], self.lengths, self.kv, self.slots)
        return logits


def _pad(a: np.ndarray, width: int) -> np.ndarray:
    if a.shape[2] == width:
        return a
    pad = np.zeros((a.shape[0], a.shape[1], width - a.shape[2], a.shape[3]), a.dtype)
    return np.concatenate([a, pad], axis=2)
