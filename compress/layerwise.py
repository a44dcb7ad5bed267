"""Layer-by-layer calibration (the sequential scheme of GPTQ and SparseGPT).

Calibration sequences go through the embeddings once; then each decoder layer in turn sees
the outputs of the already-compressed layers before it, its linear layers' input statistics
are collected, the layer is compressed, and its new outputs feed the next layer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from tqdm import tqdm


class _Stop(Exception):
    pass


@dataclass
class InputStats:
    """Running statistics of a linear layer's inputs x (rows are tokens)."""

    in_features: int
    hessian: bool
    tokens: int = 0
    sq_sum: torch.Tensor = field(init=False)
    xtx: torch.Tensor | None = field(init=False, default=None)

    def __post_init__(self):
        self.sq_sum = torch.zeros(self.in_features)
        if self.hessian:
            self.xtx = torch.zeros(self.in_features, self.in_features)

    def add(self, x: torch.Tensor) -> None:
        x = x.reshape(-1, self.in_features).float()
        self.tokens += x.size(0)
        self.sq_sum += (x * x).sum(0)
        if self.xtx is not None:
            self.xtx += x.T @ x

    def hessian_matrix(self) -> torch.Tensor:
        """H = 2/n X^T X, the Hessian of the layer-wise squared error."""
        return self.xtx * (2.0 / max(self.tokens, 1))


def decoder_layers(model) -> torch.nn.ModuleList:
    return model.model.layers


@torch.no_grad()
def layer_inputs(model, batches: torch.Tensor) -> tuple[list[torch.Tensor], dict]:
    """Hidden states entering layer 0 for each calibration sequence, and the layer's kwargs."""
    captured, kwargs = [], {}

    def hook(_module, args, kw):
        captured.append(args[0] if args else kw["hidden_states"])
        kwargs.update({k: v for k, v in kw.items() if k != "hidden_states"})
        raise _Stop

    handle = decoder_layers(model)[0].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        for seq in batches:
            try:
                model(input_ids=seq.unsqueeze(0), use_cache=False)
            except _Stop:
                pass
    finally:
        handle.remove()
    return captured, kwargs


def _out(result):
    return result[0] if isinstance(result, tuple) else result


@torch.no_grad()
def run_layerwise(
    model,
    batches: torch.Tensor,
    skip: list[str],
    hessian: bool,
    compress_layer: Callable[[int, dict[str, torch.nn.Linear], dict[str, InputStats]], None],
    desc: str,
) -> None:
    """Compress every decoder layer in order with statistics of its real (already-compressed) inputs."""
    model.eval()
    inputs, kwargs = layer_inputs(model, batches)
    for index, layer in enumerate(tqdm(decoder_layers(model), desc=desc, unit="layer")):
        linears = {
            n: m
            for n, m in layer.named_modules()
            if isinstance(m, torch.nn.Linear) and n.rsplit(".", 1)[-1] not in skip
        }
        stats = {n: InputStats(m.in_features, hessian) for n, m in linears.items()}
        handles = [
            m.register_forward_hook(lambda mod, args, out, s=stats[n]: s.add(args[0])) for n, m in linears.items()
        ]
        for x in inputs:
            layer(x, **kwargs)
        for h in handles:
            h.remove()
        compress_layer(index, linears, stats)
        inputs = [_out(layer(x, **kwargs)) for x in inputs]
