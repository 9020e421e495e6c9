"""Segment reductions over index vectors (superpoints, voxels) with PyTorch's native scatter_reduce.

No torch_scatter dependency: `scatter_reduce` covers mean / max / sum and runs on CPU and GPU.
"""
from __future__ import annotations

import torch

__all__ = ["scatter_sum", "scatter_mean", "scatter_max", "segment_count"]


def _expand(index: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
    return index.view(-1, *([1] * (src.dim() - 1))).expand_as(src)


def scatter_sum(src: torch.Tensor, index: torch.Tensor, size: int) -> torch.Tensor:
    """out[i] = Σ src[index == i] (rows), shape (size, *src.shape[1:])."""
    out = src.new_zeros((size, *src.shape[1:]))
    return out.index_add_(0, index, src)


def segment_count(index: torch.Tensor, size: int, dtype=torch.float32) -> torch.Tensor:
    """Rows per segment, (size,)."""
    return torch.zeros(size, dtype=dtype, device=index.device).index_add_(
        0, index, torch.ones_like(index, dtype=dtype))


def scatter_mean(src: torch.Tensor, index: torch.Tensor, size: int) -> torch.Tensor:
    """Mean of rows per segment; empty segments give 0."""
    cnt = segment_count(index, size, src.dtype).clamp_min(1)
    return scatter_sum(src, index, size) / cnt.view(-1, *([1] * (src.dim() - 1)))


def scatter_max(src: torch.Tensor, index: torch.Tensor, size: int) -> torch.Tensor:
    """Max of rows per segment; empty segments give 0."""
    out = src.new_zeros((size, *src.shape[1:]))
    return out.scatter_reduce(0, _expand(index, src), src, reduce="amax", include_self=False)
