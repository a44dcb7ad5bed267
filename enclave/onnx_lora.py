"""Many LoRA adapters on one ONNX graph, mixed in one batch (what Punica's and S-LoRA's batched LoRA
kernels and vLLM's ``punica_wrapper`` do, in plain ONNX operators).

Each adapted projection of the graph gets a side branch over the adapters of the run's rows,
masked per row (the k-th adapter present owns columns k*R to (k+1)*R; a base row's mask is all
zeros)::

    y = base(x) + ((x @ A^T) * mask) @ B      x (B, T, in), A (K*R, in), mask (B, 1, K*R), B (K*R, out)

so a step over rows of four adapters is still one run of the graph, two small GEMMs per projection
(no per-row gather: on CPU that costs more than the few extra columns). The table keeps every
loaded adapter's A and B stacked slot after slot (zero-padded to the projection's largest rank R,
the scale ``lora_alpha / r`` folded into B), and a run reads only the slots its rows use: a
contiguous run of slots is a view of the stack, others are gathered once per set of slots and
kept while that set runs; a batch of base rows reads none (K = 0). Memory per adapter is about its
own size, the base weights are never copied. One mask input per distinct R (``lora_mask.R``). The
exported graph fuses q, k and v into one ``qkv_proj``; the adapters' q_proj, k_proj and v_proj
weights go into the column blocks of its output.

Adapters come from `enclave tune` (PEFT LoRA, safetensors). Anything this branch cannot express
exactly (other PEFT types, biases, modules_to_save, per-module alpha) is refused at load.
"""

from __future__ import annotations

import json
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

MASK = "lora_mask.{}"  # one per distinct rank R: (batch, 1, slots * R)
# PEFT target module -> (block, the graph's projection, which q/k/v part of a fused qkv_proj)
PROJECTIONS = {
    "q_proj": ("attn", "qkv_proj", 0),
    "k_proj": ("attn", "qkv_proj", 1),
    "v_proj": ("attn", "qkv_proj", 2),
    "o_proj": ("attn", "o_proj", None),
    "gate_proj": ("mlp", "gate_proj", None),
    "up_proj": ("mlp", "up_proj", None),
    "down_proj": ("mlp", "down_proj", None),
}
_KEY = re.compile(r"^base_model\.model\.model\.layers\.(\d+)\.(?:self_attn|mlp)\.(\w+)\.lora_([AB])\.weight$")


class AdapterError(ValueError):
    """An adapter this backend cannot run exactly; the message says why."""


@dataclass
class LoraWeights:
    """One adapter: per (layer, PEFT module), A (r, in) and B (out, r) with the scale folded into B."""

    name: str
    modules: set[str]
    weights: dict[tuple[int, str], tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        """Bytes of its weights."""
        return sum(a.nbytes + b.nbytes for a, b in self.weights.values())


def read_adapter(name: str, path: Path) -> LoraWeights:
    """Read a PEFT LoRA adapter directory (adapter_config.json, adapter_model.safetensors).

    Args:
        name: the name requests use for it.
        path: the adapter directory (hash-verified by the caller).

    Returns:
        Its weights, the scale folded into B.

    Raises:
        AdapterError: not a LoRA this backend runs exactly (the message names the setting).
    """
    from safetensors.numpy import load_file

    cfg = json.loads((path / "adapter_config.json").read_text())
    problems = []
    if cfg.get("peft_type") != "LORA":
        problems.append(f"peft_type {cfg.get('peft_type')!r} (only LORA)")
    if cfg.get("bias", "none") != "none":
        problems.append(f"bias {cfg.get('bias')!r} (only none)")
    if cfg.get("modules_to_save"):
        problems.append(f"modules_to_save {cfg['modules_to_save']} (full copies of modules)")
    if cfg.get("alpha_pattern") or cfg.get("use_dora"):
        problems.append("alpha_pattern or use_dora")
    modules = set(cfg.get("target_modules") or [])
    unknown = sorted(modules - set(PROJECTIONS))
    if unknown:
        problems.append(f"target_modules {unknown} (supported: {', '.join(PROJECTIONS)})")
    if problems:
        raise AdapterError(f"adapter {name}: the onnxruntime backend cannot run {'; '.join(problems)}")
    tensors = load_file(str(path / "adapter_model.safetensors"))
    alpha = float(cfg.get("lora_alpha", 8))
    out = LoraWeights(name, modules)
    parts: dict[tuple[int, str], dict[str, np.ndarray]] = {}
    for key, value in tensors.items():
        m = _KEY.match(key)
        if m is None:
            raise AdapterError(f"adapter {name}: unexpected tensor {key} (a LoRA of a Llama-style model has none)")
        parts.setdefault((int(m.group(1)), m.group(2)), {})[m.group(3)] = value.astype(np.float32)
    for (layer, module), ab in parts.items():
        a, b = ab["A"], ab["B"]
        r = a.shape[0]
        scale = alpha / (r**0.5 if cfg.get("use_rslora") else r)
        out.weights[(layer, module)] = (a, b * np.float32(scale))
    return out


@dataclass
class Dims:
    """The output widths of the fused qkv projection's parts."""

    q: int
    kv: int

    @classmethod
    def of(cls, decoder: dict) -> Dims:
        """From genai_config.json's ``decoder`` section."""
        head = decoder["head_size"]
        return cls(q=decoder["num_attention_heads"] * head, kv=decoder["num_key_value_heads"] * head)

    def slices(self) -> list[slice]:
        """Columns of q, k and v in qkv_proj's output."""
        return [slice(0, self.q), slice(self.q, self.q + self.kv), slice(self.q + self.kv, self.q + 2 * self.kv)]


@dataclass
class Slot:
    """A loaded adapter as the table keeps it: its weights live only in the stack."""

    name: str
    ranks: dict[tuple[int, str], int]  # (layer, graph projection) -> its rank there
    blocks: set[tuple[int, str, str]]  # (layer, block, graph projection) it adapts


class LoraTable:
    """The loaded adapters, their slots, and the stacked A and B the graph reads (the only copy of
    the adapters' weights: memory per adapter is about its file's size)."""

    gathered_kept = 4  # sets of non-contiguous slots whose gathered inputs are kept

    def __init__(self, dims: Dims) -> None:
        self.dims = dims
        self.adapters: list[Slot | None] = []  # slot i + 1; None: a freed slot (rows keep their slots)
        self.stacked: dict[tuple[int, str], tuple[np.ndarray, np.ndarray]] = {}  # A (S*R, in), B (S*R, out)
        self.ranks: dict[tuple[int, str], int] = {}  # (layer, projection) -> R
        self._gathered: OrderedDict[tuple[int, ...], dict[str, np.ndarray]] = OrderedDict()

    def slot(self, name: str | None) -> int:
        """The slot rows of this adapter use (0: the base)."""
        if not name:
            return 0
        for i, adapter in enumerate(self.adapters):
            if adapter is not None and adapter.name == name:
                return i + 1
        raise KeyError(name)

    @property
    def active(self) -> bool:
        """Whether any adapter is loaded (the graph has LoRA branches)."""
        return any(a is not None for a in self.adapters)

    def projections(self) -> set[tuple[int, str, str]]:
        """(layer, block, graph projection) that some loaded adapter changes."""
        return {b for a in self.adapters if a is not None for b in a.blocks}

    def add(self, adapter: LoraWeights) -> None:
        """Take an adapter into the first free slot and stack its weights beside the others'."""
        blocks = {(layer, PROJECTIONS[m][0], PROJECTIONS[m][1]) for layer, m in adapter.weights}
        matrices = {(layer, proj): self._slot_matrices(adapter, layer, proj) for layer, _, proj in blocks}
        entry = Slot(adapter.name, {key: a.shape[1] for key, (a, _) in matrices.items()}, blocks)
        free = next((i for i, a in enumerate(self.adapters) if a is None), None)
        if free is None:
            free = len(self.adapters)
            self.adapters.append(entry)
        else:
            self.adapters[free] = entry
        self._stack({free: matrices})

    def remove(self, name: str) -> None:
        """Free an adapter's slot (other adapters keep theirs: running rows hold slot numbers)."""
        self.adapters[self.slot(name) - 1] = None
        while self.adapters and self.adapters[-1] is None:
            self.adapters.pop()
        self._stack({})

    def _stack(self, new: dict[int, dict[tuple[int, str], tuple[np.ndarray, np.ndarray]]]) -> None:
        """Lay the slots out again at each projection's largest rank: new adapters from ``new``
        (slot index -> (in, r) and (r, out) per projection), the others from the old stack."""
        old, old_ranks = self.stacked, self.ranks
        stacked, ranks, count = {}, {}, len(self.adapters)
        for layer, _block, proj in sorted(self.projections()):
            key = (layer, proj)
            rank = max(a.ranks[key] for a in self.adapters if a is not None and key in a.ranks)
            some = next(m[key] for m in new.values() if key in m) if key not in old else None
            width_in, width_out = (
                (some[0].shape[0], some[1].shape[1]) if some else (old[key][0].shape[1], old[key][1].shape[1])
            )
            stacked_a = np.zeros((count * rank, width_in), np.float32)
            stacked_b = np.zeros((count * rank, width_out), np.float32)
            for i, a in enumerate(self.adapters):
                if a is None or key not in a.ranks:
                    continue
                r, at = a.ranks[key], slice(i * rank, i * rank + a.ranks[key])
                if i in new:
                    stacked_a[at], stacked_b[at] = new[i][key][0].T, new[i][key][1]
                else:
                    was = slice(i * old_ranks[key], i * old_ranks[key] + r)
                    stacked_a[at], stacked_b[at] = old[key][0][was], old[key][1][was]
            stacked[key] = stacked_a, stacked_b
            ranks[key] = rank
        self.stacked, self.ranks = stacked, ranks
        self._gathered.clear()

    def feed(self, slots: np.ndarray) -> dict[str, np.ndarray]:
        """The LoRA inputs of a run whose rows use these slots: A and B of the adapters present, and masks.

        Args:
            slots: each row's slot (0: the base).

        Returns:
            Per adapted projection its A and B over the K adapters present (K = 0 for base rows
            only), and per distinct rank R the rows' masks (B, 1, K*R).
        """
        present = tuple(sorted({int(s) for s in slots if s}))
        weights = self._weights(present)
        column = {slot: k for k, slot in enumerate(present)}
        masks = {}
        for rank in sorted(set(self.ranks.values())):
            mask = np.zeros((len(slots), 1, len(present) * rank), np.float32)
            for row, slot in enumerate(slots):
                if slot:
                    mask[row, 0, column[int(slot)] * rank : (column[int(slot)] + 1) * rank] = 1.0
            masks[MASK.format(rank)] = mask
        return {**weights, **masks}

    def _weights(self, present: tuple[int, ...]) -> dict[str, np.ndarray]:
        """A and B over these slots: views of the stack when the slots are contiguous, else gathered copies."""
        contiguous = not present or present == tuple(range(present[0], present[-1] + 1))
        if not contiguous and present in self._gathered:
            self._gathered.move_to_end(present)
            return self._gathered[present]
        out = {}
        for (layer, proj), (a, b) in self.stacked.items():
            rank = self.ranks[(layer, proj)]
            if contiguous:
                rows = slice((present[0] - 1) * rank, present[-1] * rank) if present else slice(0, 0)
                part_a, part_b = a[rows], b[rows]
            else:
                index = np.concatenate([np.arange((s - 1) * rank, s * rank) for s in present])
                part_a, part_b = a[index], b[index]
            out[input_name(layer, proj, "A")], out[input_name(layer, proj, "B")] = part_a, part_b
        if not contiguous:
            self._gathered[present] = out
            while len(self._gathered) > self.gathered_kept:
                self._gathered.popitem(last=False)
        return out

    def _slot_matrices(self, adapter: LoraWeights, layer: int, proj: str):
        """One adapter's (in, r) and (r, out) for a graph projection, or (None, None) if it leaves it alone."""
        if proj != "qkv_proj":
            module = next((m for m, (_, p, _) in PROJECTIONS.items() if p == proj), None)
            ab = adapter.weights.get((layer, module))
            return (ab[0].T, ab[1].T) if ab else (None, None)
        parts = [(i, adapter.weights.get((layer, m))) for m, (_, p, i) in PROJECTIONS.items() if p == "qkv_proj"]
        parts = [(i, ab) for i, ab in parts if ab is not None]
        if not parts:
            return None, None
        slices = self.dims.slices()
        a = np.concatenate([ab[0].T for _, ab in parts], axis=1)  # (in, sum r)
        b = np.zeros((a.shape[1], slices[2].stop), np.float32)
        row = 0
        for i, (lora_a, lora_b) in parts:
            r = lora_a.shape[0]
            b[row : row + r, slices[i]] = lora_b.T
            row += r
        return a, b


def input_name(layer: int, proj: str, which: str) -> str:
    """The graph input of a projection's stacked A or B."""
    return f"lora.{layer}.{proj}.{which}"


def add_lora(model, projections: set[tuple[int, str, str]], ranks: dict[tuple[int, str], int]):
    """Give each (layer, block, projection) of the graph its masked LoRA side branch.

    Args:
        model: the decoder ``onnx.ModelProto`` (changed in place).
        projections: what to adapt, from ``LoraTable.projections``.
        ranks: each projection's R, from ``LoraTable.ranks`` (it picks the mask input).

    Returns:
        The same model, with per projection its A and B inputs, and one mask input per distinct R.

    Raises:
        ValueError: a projection is not in the graph.
    """
    from onnx import TensorProto, helper

    graph = model.graph
    for rank in sorted({ranks[(layer, proj)] for layer, _, proj in projections}):
        graph.input.append(helper.make_tensor_value_info(MASK.format(rank), TensorProto.FLOAT, ["batch_size", 1, None]))
    for layer, block, proj in sorted(projections):
        prefix = f"/model/layers.{layer}/{block}/{proj}/"
        node = next((n for n in graph.node if n.name.startswith(prefix) and n.op_type.startswith("MatMul")), None)
        if node is None:
            raise ValueError(f"the graph has no {prefix}MatMul node to adapt")
        x, y = node.input[0], node.output[0]
        a_in, b_in, mask = input_name(layer, proj, "A"), input_name(layer, proj, "B"), MASK.format(ranks[(layer, proj)])
        graph.input.append(helper.make_tensor_value_info(a_in, TensorProto.FLOAT, [None, None]))  # (K*R, in)
        graph.input.append(helper.make_tensor_value_info(b_in, TensorProto.FLOAT, [None, None]))
        name = f"{prefix}lora"
        new = [
            helper.make_node(  # x @ A^T: (B, T, K*R); A stored (K*R, in) so that a run of slots is a view
                "FusedMatMul", [x, a_in], [f"{name}/xA"], name=f"{name}/MatMulA", domain="com.microsoft", transB=1
            ),
            helper.make_node("Mul", [f"{name}/xA", mask], [f"{name}/masked"], name=f"{name}/Mask"),  # own slot only
            helper.make_node("MatMul", [f"{name}/masked", b_in], [f"{name}/delta"], name=f"{name}/MatMulB"),
            helper.make_node("Add", [y, f"{name}/delta"], [f"{name}/output"], name=f"{name}/Add"),
        ]
        for consumer in graph.node:
            for i, value in enumerate(consumer.input):
                if value == y:
                    consumer.input[i] = f"{name}/output"
        at = list(graph.node).index(node) + 1
        for offset, n in enumerate(new):
            graph.node.insert(at + offset, n)
    return model
