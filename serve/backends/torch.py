"""Any HF checkpoint (base, merged, pruned, distilled, GPTQ) on PyTorch: the reference backend.

Rows keep their own attention mask over a shared KV buffer: a row that joins shorter than the
others is padded, masked columns are skipped by attention, and each row's position ids count
only its own tokens, so a row's logits do not depend on its neighbours. Adapters are PEFT LoRA
adapters loaded side by side; every row names its own (``adapter_names``, PEFT's mixed-batch
inference), so requests for different adapters share a batch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

BACKEND = "torch"
BASE = "__base__"  # PEFT's name for "no adapter" in adapter_names


class Backend:
    """One checkpoint, run step by step by serve.engine.batching.StepEngine.

    A ``StepModel``; all calls come from the engine thread.
    """

    backend = BACKEND

    def __init__(self, root: Path, threads: int | None = None, prefix_cache=None) -> None:
        """Load the checkpoint; ``prefix_cache`` is not used here (prefix caching runs on onnxruntime)."""
        import torch

        from enclave.hf.loader import load
        from enclave.store import resolve_model

        if threads:
            torch.set_num_threads(threads)
        self.torch = torch
        self.lm, _ = load(resolve_model(str(root), verify=False))  # the repository verified it
        self.context_length = int(getattr(self.lm.config, "max_position_embeddings", 2048))
        self.adapters: set[str] = set()

    def forward(self, ids, mask, positions, cache, adapters: list[str]):
        kwargs = {"adapter_names": adapters} if self.adapters else {}
        with self.torch.inference_mode():
            out = self.lm(
                input_ids=ids,
                attention_mask=mask,
                position_ids=positions,
                past_key_values=cache,
                use_cache=True,
                **kwargs,
            )
        return out.logits[:, -1, :].float().numpy(), out.past_key_values

    def prefill(self, prompt_ids: list[int], adapter: str | None):
        from transformers import DynamicCache

        t = self.torch
        ids = t.tensor([prompt_ids])
        logits, cache = self.forward(
            ids, t.ones_like(ids), t.arange(len(prompt_ids))[None], DynamicCache(), [adapter or BASE]
        )
        kv = [(layer.keys, layer.values) for layer in cache.layers]
        return logits[0], (kv, t.ones(1, len(prompt_ids), dtype=t.long), len(prompt_ids), adapter or BASE)

    def new_batch(self) -> TorchBatch:
        return TorchBatch(self)

    def load_adapter(self, name: str, path: Path) -> None:
        from enclave.deps import require

        if not self.adapters:
            self.lm = (
                require("peft", "tune")
                .PeftModel.from_pretrained(self.lm, path, adapter_name=name, is_trainable=False)
                .eval()
            )
        else:
            self.lm.load_adapter(path, adapter_name=name, is_trainable=False)
        self.adapters.add(name)

    def unload_adapter(self, name: str) -> None:
        self.lm.delete_adapter(name) if len(self.adapters) > 1 else None
        self.adapters.discard(name)
        if not self.adapters:
            self.lm = self.lm.unload()  # back to the plain base model (LoRA weights removed, not merged)


class TorchBatch:
    """KV tensors (B, H, W, D) per layer, a (B, W) mask, each row's next position and adapter."""

    def __init__(self, model: Backend) -> None:
        self.model = model
        self.kv: list[tuple] = []
        self.mask = None
        self.positions: list[int] = []
        self.adapters: list[str] = []

    def add(self, row) -> None:
        kv, mask, length, adapter = row
        t = self.model.torch
        if self.mask is None:
            self.kv, self.mask = kv, mask
        else:
            width = max(self.mask.shape[1], mask.shape[1])
            self.kv = [
                (t.cat([_pad(k0, width), _pad(k1, width)]), t.cat([_pad(v0, width), _pad(v1, width)]))
                for (k0, v0), (k1, v1) in zip(self.kv, kv)
            ]
            self.mask = t.cat([_pad_mask(self.mask, width), _pad_mask(mask, width)])
        self.positions.append(length)
        self.adapters.append(adapter)

    def keep(self, rows: list[int]) -> None:
        if not rows:
            self.kv, self.mask, self.positions, self.adapters = [], None, [], []
            return
        idx = self.model.torch.tensor(rows)
        mask = self.mask[idx]
        cols = mask.any(0).nonzero().flatten()  # drop columns no remaining row attends to
        self.mask = mask[:, cols]
        self.kv = [(k[idx][:, :, cols], v[idx][:, :, cols]) for k, v in self.kv]
        self.positions = [self.positions[i] for i in rows]
        self.adapters = [self.adapters[i] for i in rows]

    def step(self, tokens: list[int]) -> np.ndarray:
        from transformers import DynamicCache

        t = self.model.torch
        cache = DynamicCache()
        for i, (k, v) in enumerate(self.kv):
            cache.update(k, v, i)
        self.mask = t.cat([self.mask, t.ones(len(tokens), 1, dtype=t.long)], dim=1)
        positions = t.tensor(self.positions)[:, None]
        logits, cache = self.model.forward(t.tensor(tokens)[:, None], self.mask, positions, cache, self.adapters)
        self.kv = [(layer.keys, layer.values) for layer in cache.layers]
        self.positions = [p + 1 for p in self.positions]
        return logits


def _pad(x, width: int):
    import torch

    if x.shape[2] == width:
        return x
    return torch.cat([x, x.new_zeros(x.shape[0], x.shape[1], width - x.shape[2], x.shape[3])], dim=2)


def _pad_mask(m, width: int):
    import torch

    if m.shape[1] == width:
        return m
    return torch.cat([m, m.new_zeros(m.shape[0], width - m.shape[1])], dim=1)
