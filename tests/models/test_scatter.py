"""Segment reductions: the one-hot (few segments) and atomic paths agree, and fp16 inputs keep exact counts."""
from __future__ import annotations

import torch

from oseg3d.models import scatter
from oseg3d.models.scatter import scatter_mean, scatter_sum, segment_count


def _reference_sum(src, index, size):
    return torch.stack([src[index == i].sum(0) for i in range(size)])


def test_dense_and_atomic_paths_agree(monkeypatch):
    g = torch.Generator().manual_seed(0)
    src = torch.randn(500, 3, 4, generator=g, dtype=torch.float64)
    index = torch.randint(0, 5, (500,), generator=g)
    dense = scatter_sum(src, index, 5)
    monkeypatch.setattr(scatter, "DENSE_MAX_SEGMENTS", 0)
    atomic = scatter_sum(src, index, 5)
    torch.testing.assert_close(dense, atomic)
    torch.testing.assert_close(dense, _reference_sum(src, index, 5))
    assert dense.shape == (5, 3, 4)


def test_half_mean_over_a_segment_larger_than_fp16_max():
    n = 70_000  # > 65,504: an fp16 count would be inf and the mean 0
    src = torch.full((n, 2), 0.5, dtype=torch.float16)
    index = torch.zeros(n, dtype=torch.long)
    assert segment_count(index, 1).item() == n
    out = scatter_mean(src, index, 1)
    assert out.dtype == torch.float16 and torch.equal(out, torch.full((1, 2), 0.5, dtype=torch.float16))


def test_gradients_flow_through_both_paths(monkeypatch):
    src = torch.randn(50, 4, requires_grad=True)
    index = torch.arange(50) % 3
    scatter_mean(src, index, 3).sum().backward()
    dense = src.grad.clone()
    src.grad = None
    monkeypatch.setattr(scatter, "DENSE_MAX_SEGMENTS", 0)
    scatter_mean(src, index, 3).sum().backward()
    torch.testing.assert_close(dense, src.grad)
