"""The pruning math on one linear layer with correlated, unevenly scaled inputs."""

import pytest
import torch

from compress.layerwise import InputStats
from compress.prune import magnitude, sparsegpt, wanda
from compress.prune.masks import n_of_m, unstructured


@pytest.fixture(scope="module")
def layer():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(32, 64, generator=g)
    mix = torch.randn(64, 64, generator=g) * 0.3 + torch.eye(64)
    x = (torch.randn(2048, 64, generator=g) @ mix) * torch.linspace(0.1, 3.0, 64)  # uneven input scales
    stats = InputStats(64, hessian=True)
    stats.add(x)
    return w, x, stats


def error(w, new, x) -> float:
    return float(((x @ w.T - x @ new.T) ** 2).mean())


def test_masks():
    score = torch.tensor([[4.0, 1.0, 3.0, 2.0, 8.0, 5.0, 7.0, 6.0]])
    assert n_of_m(score, 2, 4).tolist() == [[False, True, False, True, False, True, False, True]]
    assert unstructured(score, 0.25, per_row=True).tolist() == [[False, True, False, True, False, False, False, False]]


@pytest.mark.parametrize("nm", [None, (2, 4)])
def test_every_method_hits_the_sparsity(layer, nm):
    w, _, stats = layer
    for new in (
        magnitude.prune(w, 0.5, nm),
        wanda.prune(w, stats.sq_sum, 0.5, nm),
        sparsegpt.prune(w, stats.hessian_matrix(), 0.5, nm),
    ):
        assert float((new == 0).float().mean()) == pytest.approx(0.5, abs=0.02)
        if nm:
            assert ((new.reshape(32, 16, 4) == 0).sum(-1) >= 2).all()


def test_data_aware_methods_lose_less(layer):
    w, x, stats = layer
    mag = error(w, magnitude.prune(w, 0.5, None), x)
    wan = error(w, wanda.prune(w, stats.sq_sum, 0.5, None), x)
    sgpt = error(w, sparsegpt.prune(w, stats.hessian_matrix(), 0.5, None), x)
    assert sgpt < wan < mag
    assert sgpt < 0.5 * mag


def test_sparsegpt_keeps_exact_weights_when_nothing_is_pruned(layer):
    w, _, stats = layer
    new = sparsegpt.prune(w, stats.hessian_matrix(), 1e-9, None)
    assert torch.count_nonzero(new == 0) <= 1
