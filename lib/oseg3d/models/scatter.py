"""Segment reductions over index vectors (superpoints, voxels) with PyTorch's native ops.

No torch_scatter dependency: `index_add_` / `scatter_reduce` cover sum / mean / max on CPU and GPU. Two
choices matter on the GPU:
- sums accumulate in fp32 whatever the input dtype: fp16 counts stop at 65,504 (a larger segment's mean
  became 0) and fp16 atomics are slow;
- a reduction into a few segments (a per-sample mean over all voxels: every row hits the same few
  addresses) is a one-hot GEMM, not atomics — on the H100 the atomic version of the memory adapters'
  global mean took 7 ms of a 20k-point online frame.
"""
from __future__ import annotations

import torch

__all__ = ["scatter_sum", "scatter_mean", "scatter_max", "segment_count"]

DENSE_MAX_SEGMENTS = 64  # up to here a (segments × rows) one-hot GEMM beats contended atomics
DENSE_MAX_ELEMENTS = 1 << 25  # and its one-hot stays under 128 MB


def _expand(index: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
    return index.view(-1, *([1] * (src.dim() - 1))).expand_as(src)


def _sum_fp32(src: torch.Tensor, index: torch.Tensor, size: int) -> torch.Tensor:
    """Σ src rows per segment, in fp32 (or src's dtype if wider), shape (size, *src.shape[1:])."""
    acc = src.dtype if src.dtype in (torch.float32, torch.float64) else torch.float32
    flat = src.reshape(len(src), -1).to(acc)
    if size <= DENSE_MAX_SEGMENTS and size * len(src) <= DENSE_MAX_ELEMENTS:
        onehot = (index[None, :] == torch.arange(size, device=index.device)[:, None]).to(acc)
        with torch.autocast(src.device.type, enabled=False):
            out = onehot @ flat
    else:
        out = flat.new_zeros((size, flat.shape[1])).index_add_(0, index, flat)
    return out.view(size, *src.shape[1:])


def scatter_sum(src: torch.Tensor, index: torch.Tensor, size: int) -> torch.Tensor:
    """out[i] = Σ src[index == i] (rows), shape (size, *src.shape[1:]), src's dtype."""
    return _sum_fp32(src, index, size).to(src.dtype)


def segment_count(index: torch.Tensor, size: int, dtype=torch.float32) -> torch.Tensor:
    """Rows per segment, (size,) (counted exactly, then cast to `dtype`)."""
    return torch.bincount(index, minlength=size)[:size].to(dtype)


def scatter_mean(src: torch.Tensor, index: torch.Tensor, size: int) -> torch.Tensor:
    """Mean of rows per segment (computed in fp32, returned in src's dtype); empty segments give 0."""
    cnt = segment_count(index, size).clamp_min(1)
    return (_sum_fp32(src, index, size) / cnt.view(-1, *([1] * (src.dim() - 1)))).to(src.dtype)


def scatter_max(src: torch.Tensor, index: torch.Tensor, size: int) -> torch.Tensor:
    """Max of rows per segment; empty segments give 0."""
    out = src.new_zeros((size, *src.shape[1:]))
    return out.scatter_reduce(0, _expand(index, src), src, reduce="amax", include_self=False)
