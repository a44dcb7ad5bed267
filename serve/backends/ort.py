"""ONNX artifacts (`enclave compress export --format onnx`) on ONNX Runtime.

The exported graph uses GroupQueryAttention, which reads each row's length from the attention
mask and writes the new key/value at that row's own position; so rows of different lengths
share one right-padded KV buffer (batch, kv_heads, capacity, head_dim) and a decode step is one
run of the session for the whole batch. On CPU the buffer is preallocated and updated in place
(IO binding); the CUDA execution provider, used when onnxruntime-gpu is installed, gets the
cache as inputs and returns it grown.

The graph is rewritten in memory at load (``enclave.onnx_graph``) so that the output layer
runs only at the position each row samples from, not at every prompt position; and, while LoRA
adapters are loaded, so that each adapted projection has a gathered LoRA branch
(``enclave.onnx_lora``): rows of different adapters, and of the base, share one step.
"""

from __future__ import annotations

import functools
import json
import mmap
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from enclave import onnx_graph, onnx_lora
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
        self.logits_name = dec["outputs"]["logits"]
        self.lora = onnx_lora.LoraTable(onnx_lora.Dims.of(dec))
        self.generation = 0  # bumped when the session or the adapters' inputs change: batches rebind
        self._build()
        self.layers = dec["num_hidden_layers"]
        self.past, self.present = onnx_graph.kv_names(dec, "past"), onnx_graph.kv_names(dec, "present")
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
        return self.lora.feed(slots)

    def _run(
        self,
        tokens: np.ndarray,
        lengths: np.ndarray,
        past: list[np.ndarray],
        slots: np.ndarray | None = None,
        sampled: np.ndarray | None = None,
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        """tokens (B, T) appended to rows whose total lengths become ``lengths``; past (B, H, P, D) each.

        Rows with fewer new tokens than T (fresh prompts side by side, no past) are padded at the
        end; ``sampled`` names the position each row's logits come from (default: the last).
        """
        width = max(int(lengths.max()), past[0].shape[2] + tokens.shape[1])
        mask = (np.arange(width)[None, :] < lengths[:, None]).astype(np.int64)  # (B, width)
        if sampled is None:
            sampled = np.full(len(tokens), tokens.shape[1] - 1, np.int64)
        feed = {
            "input_ids": tokens,
            "attention_mask": mask,
            onnx_graph.SAMPLED_INDEX: sampled,
            **dict(zip(self.past, past)),
            **self.lora_feed(np.zeros(len(tokens), np.int64) if slots is None else slots),
        }
        if self.position_ids:  # each row's new tokens follow its own past
            start = lengths - sampled - 1
            feed["position_ids"] = (start[:, None] + np.arange(tokens.shape[1])[None, :]).astype(np.int64)
        out = self.session.run([self.logits_name, *self.present], feed)
        return out[0][:, 0, :], out[1:]

    def prefill(self, prompt_ids: list[int], adapter: str | None):
        """The whole prompt in one run (cached prefix reused)."""
        pending = self.begin(prompt_ids, adapter)
        return self.prefill_chunk([pending], len(prompt_ids))[0]

    def begin(self, prompt_ids: list[int], adapter: str | None) -> Pending:
        """A prompt to prefill in chunks; its cached prefix (if any) is already done.

        On CPU its KV goes into buffers of the prompt's full length that every chunk's run writes
        in place (IO binding, as ``OrtBatch``), so a long prompt's chunks copy no cache.
        """
        slot = self.lora.slot(adapter)
        cache = self.prefix_cache
        cached, blocks = cache.lookup(prompt_ids, adapter) if cache is not None else (0, [])
        bound = self.session.get_providers()[0] == "CPUExecutionProvider"
        width = len(prompt_ids) if bound else cached
        kv = [np.zeros((1, self.kv[0], width, self.kv[1]), self.dtype) for _ in self.past]
        for i, buf in enumerate(kv):  # the cached prefix's KV
            for j, block in enumerate(blocks):
                n = block[i].shape[1]
                buf[0, :, j * n : (j + 1) * n] = block[i]
        return Pending(list(prompt_ids), adapter, slot, cached, kv, bound)

    def prefill_chunk(self, prompts: list[Pending], tokens: int) -> list[tuple[np.ndarray, tuple] | None]:
        """Advance each prompt by up to ``tokens`` tokens.

        Prompts with nothing computed yet run together in one run of the graph (right-padded to the
        longest chunk); a prompt that continues (a cached prefix, an earlier chunk) runs alone,
        because GroupQueryAttention takes several new tokens over a past for one row at a time.

        Args:
            prompts: from ``begin``; each keeps its KV so far.
            tokens: the most new tokens of one prompt.

        Returns:
            Per prompt: None while it has tokens left, else its next-token logits and its row for
            ``Batch.add`` (its KV then goes into the prefix cache).
        """
        fresh = [p for p in prompts if p.done == 0]
        groups = ([fresh] if fresh else []) + [[p] for p in prompts if p.done]
        finished = {}
        for group in groups:
            for p, result in zip(group, self._chunk(group, tokens)):
                finished[id(p)] = result
        return [finished[id(p)] for p in prompts]

    def _chunk(self, prompts: list[Pending], tokens: int) -> list[tuple[np.ndarray, tuple] | None]:
        """One run: a single prompt over its past, or fresh prompts side by side."""
        counts = np.array([min(p.remaining, tokens) for p in prompts], np.int64)
        if len(prompts) == 1 and prompts[0].bound:
            logits = self._run_in_place(prompts[0], int(counts[0]))
        else:
            ids = np.zeros((len(prompts), int(counts.max())), np.int64)  # shorter chunks padded at the end
            for i, (p, n) in enumerate(zip(prompts, counts)):
                ids[i, :n] = p.ids[p.done : p.done + n]
            if len(prompts) == 1:  # a prompt over its past (devices other than the CPU)
                past = prompts[0].kv
            else:  # fresh prompts side by side: no past
                past = [np.zeros((len(prompts), self.kv[0], 0, self.kv[1]), self.dtype) for _ in self.past]
            done = np.array([p.done for p in prompts], np.int64)
            logits, present = self._run(ids, done + counts, past, np.array([p.slot for p in prompts]), counts - 1)
            for i, (p, n) in enumerate(zip(prompts, counts)):
                if p.bound:
                    for buf, a in zip(p.kv, present):
                        buf[0, :, p.done : p.done + n] = a[i, :, p.done : p.done + n]
                else:
                    p.kv = [a[i : i + 1, :, : p.done + n] for a in present]
        out = []
        for i, (p, n) in enumerate(zip(prompts, counts)):
            p.done += int(n)
            if p.remaining:
                out.append(None)
                continue
            kv = [a[:, :, : p.done] for a in p.kv]
            if self.prefix_cache is not None:
                self.prefix_cache.store(
                    p.ids, p.adapter, lambda start, end, kv=kv: [a[0, :, start:end].copy() for a in kv]
                )
            out.append((logits[i], (kv, p.done, p.slot)))
        return out

    def _run_in_place(self, p: Pending, n: int) -> np.ndarray:
        """The next ``n`` tokens of one prompt, its KV buffers bound as past and present (written in
        place); the binding is made once per prompt (and session or adapters), each chunk rebinds
        only its token ids, mask and positions."""
        if p.binding is None or p.generation != self.generation:
            p.binding, p.generation = self._bind_prompt(p), self.generation
        io = p.binding
        feed = {  # bound by address: these arrays must live until the run returns
            "input_ids": np.array([p.ids[p.done : p.done + n]], np.int64),
            "attention_mask": np.ones((1, p.done + n), np.int64),
            onnx_graph.SAMPLED_INDEX: np.array([n - 1], np.int64),
        }
        if self.position_ids:
            feed["position_ids"] = np.arange(p.done, p.done + n, dtype=np.int64)[None]
        for name, array in feed.items():
            io.bind_cpu_input(name, array)
        self.session.run_with_iobinding(io)
        return p.held["logits"][:, 0, :].copy()

    def _bind_prompt(self, p: Pending):
        """An io_binding of a prompt's KV buffers, its adapter's inputs and a logits buffer (kept in ``p.held``)."""
        io = self.session.io_binding()
        shape = p.kv[0].shape
        for past, present, buf in zip(self.past, self.present, p.kv):
            io.bind_input(past, "cpu", 0, self.dtype, shape, buf.ctypes.data)
            io.bind_output(present, "cpu", 0, self.dtype, shape, buf.ctypes.data)
        p.held = {k: np.ascontiguousarray(v) for k, v in self.lora_feed(np.array([p.slot], np.int64)).items()}
        for name, array in p.held.items():
            io.bind_cpu_input(name, array)
        p.held["logits"] = np.zeros((1, 1, self.vocab), np.float32)
        io.bind_output(self.logits_name, "cpu", 0, np.float32, p.held["logits"].shape, p.held["logits"].ctypes.data)
        return io

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
        release_freed_memory()


def release_freed_memory() -> None:
    """Give the memory freed by a restack or an old session back to the system (glibc's
    ``malloc_trim``): the freed blocks are each a little smaller than the next stack needs, so
    without it every adapter loaded would leave its old stack's size in the heap, measured at
    twice the adapters' size in resident memory. A no-op on other C libraries."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.cache
def _malloc_trim():
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    return getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None


@dataclass
class Pending:
    """A prompt being prefilled, chunk by chunk: its KV so far, one (1, H, width, D) per past input
    (width: the prompt's length when ``bound``, else ``done``)."""

    ids: list[int]
    adapter: str | None
    slot: int
    done: int
    kv: list[np.ndarray]
    bound: bool = False  # kv holds the whole prompt's length, written in place (CPU)
    binding: object = None  # its io_binding while bound (``Backend._bind_prompt``)
    generation: int = -1  # the model's generation the binding was made for
    held: dict = field(default_factory=dict)  # arrays the binding reads and writes by address

    @property
    def remaining(self) -> int:
        """Prompt tokens not run yet."""
        return len(self.ids) - self.done


class OrtBatch:
    """The running rows' KV caches in preallocated buffers that the graph updates in place.

    Each past/present pair is bound (IO binding) to one buffer of shape (rows, kv_heads,
    capacity, head_dim): GroupQueryAttention sees the same pointer for input and output and
    writes the new key/value at each row's own position, so a decode step copies no cache.
    Each row's slot holds the model's whole context where that fits ``reserve_bytes`` (memory is
    committed only as tokens arrive), else capacity doubles as rows grow; rows double; a
    finished row is replaced by moving the later ones up; an empty batch frees the buffers.
    """

    initial_capacity = 256  # tokens per row at first where the whole context is too big to reserve
    reserve_bytes = 256 * 2**20  # a buffer of at most this size holds every row's whole context at once

    def __init__(self, model: Backend) -> None:
        self.model = model
        self.kv: list[np.ndarray] = []  # per past input: (row capacity, H, capacity, D)
        self.lengths = np.zeros(0, np.int64)  # tokens in each row's cache
        self.slots = np.zeros(0, np.int64)  # each row's adapter slot (0: the base)
        self.generation = 0  # the model's generation the binding was made for
        self.binding = None  # an io_binding for the current rows and capacity
        self.logits = np.zeros(0, np.float32)
        self.lora: dict[str, np.ndarray] = {}  # the adapters' inputs for these rows, bound by address

    @property
    def rows(self) -> int:
        return len(self.lengths)

    def _reserve(self, rows: int, length: int) -> None:
        """Make room for ``rows`` rows of ``length`` tokens.

        Rows double. Each row gets the model's whole context when one buffer of that size stays
        within ``reserve_bytes``: the zeroed pages are only address space until a row's tokens
        reach them (the kernel commits memory on first write), and no row ever outgrows its
        slot, which would copy every row's cache while all streams wait (about 50 ms at 7 rows
        of 256 tokens here, 8 times that at 2,048). Otherwise capacity doubles as rows grow.
        Only the tokens rows hold are copied.
        """
        have_rows, have_len = (self.kv[0].shape[0], self.kv[0].shape[2]) if self.kv else (0, 0)
        if rows <= have_rows and length <= have_len:
            return
        m = self.model
        heads, dim = m.kv
        new_rows = have_rows if rows <= have_rows else max(rows, 2 * have_rows)
        whole = max(length, m.context_length)
        if new_rows * heads * whole * dim * np.dtype(m.dtype).itemsize <= self.reserve_bytes:
            new_len = max(have_len, whole)
        elif length <= have_len:
            new_len = have_len
        else:
            new_len = min(max(length, 2 * have_len, self.initial_capacity), whole)
        used = min(int(self.lengths.max()), have_len) if self.rows else 0  # step counts its new token first
        grown = []
        for old in self.kv or [None] * len(m.past):
            new = _reserved_zeros((new_rows, heads, new_len, dim), m.dtype)
            if old is not None and used:
                new[: self.rows, :, :used] = old[: self.rows, :, :used]
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
        # the rows' adapters and masks, by address: they change only when rows or adapters do
        self.lora = {k: np.ascontiguousarray(v) for k, v in m.lora_feed(self.slots).items()}
        for name, array in self.lora.items():
            io.bind_cpu_input(name, array)
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
        if m.position_ids:
            io.bind_cpu_input("position_ids", positions)
        m.session.run_with_iobinding(io)
        return self.logits[:, -1, :].copy()


def _reserved_zeros(shape: tuple[int, ...], dtype) -> np.ndarray:
    """A zeroed array whose pages take memory only once written: an anonymous mapping of its own
    (numpy's zeros would ask for transparent huge pages, and the first write to a row's slot
    would then commit 2 MiB at once)."""
    size = int(np.prod(shape)) * np.dtype(dtype).itemsize
    if not size:
        return np.zeros(shape, dtype)
    return np.frombuffer(mmap.mmap(-1, size), dtype).reshape(shape)


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
