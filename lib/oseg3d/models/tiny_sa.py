"""Tiny-SA neck (routes ❷, ❸): self-attention over local windows of voxels, after the U-Net decoder.

Voxels of each frame are put in Z-order (Morton code of their integer coordinates, frames never mixed),
cut into patches of `patch_size`, and every patch attends within itself with PyTorch SDPA: a
Point-Transformer-V3-style serialized attention, two blocks deep. The second block shifts its patch
borders by half a patch, so neighbours cut apart by the first block's borders meet in the second. The
order is computed once per forward and shared by both blocks; only the padding differs.

Each frame is padded to whole patches on its own, so no patch holds two frames, and padded keys are
masked out. Every block is pre-norm residual with its output projections zero-initialised: an
untrained neck is the identity, so a route ❷ model initialised from a route ❶ checkpoint starts as
exactly the ❶ function. `pos_embed` (an MLP on coordinates relative to the patch centre) is named so
that the optimiser keeps it out of weight decay (`OptimConfig.no_decay`).

Memory (SV batch 16, 244k voxels, bf16, H100): a block keeps ~2.7 KB per voxel for its backward (q/k/v,
attention output, MLP, fp32 residuals), so the two blocks cost +1.41 GB over route ❶, against the
seed's budget of +0.4 GB. In training each block is therefore recomputed in the backward pass
(activation checkpointing): +0.10 GB (peak 4.97 → 5.07 GB), for one more forward of the neck (≈ 4 ms).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from spconv.pytorch import SparseConvTensor
from torch import nn
from torch.utils.checkpoint import checkpoint

from oseg3d.models.scatter import scatter_mean

__all__ = ["TinySA", "TinySAModule", "PatchLayout", "morton_code", "serialize", "patch_layout"]

_COORD_BITS = 16  # 65,536 voxels per axis (1.3 km at 2 cm); frame index in the bits above 48


def _spread_bits(v: torch.Tensor) -> torch.Tensor:
    """Insert two zero bits after every bit of v (< 2^21): the 3-D Morton interleave, magic-number style."""
    v = v & 0x1FFFFF
    v = (v | (v << 32)) & 0x1F00000000FFFF
    v = (v | (v << 16)) & 0x1F0000FF0000FF
    v = (v | (v << 8)) & 0x100F00F00F00F00F
    v = (v | (v << 4)) & 0x10C30C30C30C30C3
    return (v | (v << 2)) & 0x1249249249249249


def morton_code(xyz: torch.Tensor) -> torch.Tensor:
    """Z-order code (int64) of non-negative integer coordinates (M, 3) below 2^16."""
    xyz = xyz.long().clamp(0, (1 << _COORD_BITS) - 1)
    return (_spread_bits(xyz[:, 0]) << 2) | (_spread_bits(xyz[:, 1]) << 1) | _spread_bits(xyz[:, 2])


def serialize(indices: torch.Tensor) -> torch.Tensor:
    """Voxel order by (frame, Z-order) for spconv indices (M, 4) = [frame, x, y, z]; a permutation of 0..M-1."""
    key = (indices[:, 0].long() << (3 * _COORD_BITS)) | morton_code(indices[:, 1:])
    return torch.argsort(key)


@dataclass
class PatchLayout:
    """Where every voxel sits in the padded, patched sequence of one block.

    Attributes:
        slot: (M,) position of voxel i in the padded sequence (length num_patches · patch_size).
        key_mask: (num_patches, 1, 1, patch_size) bool, True for real voxels (SDPA's boolean attn_mask).
        rel: (M, 3) coordinates relative to the voxel's patch centre, in units of `pos_scale` voxels.
    """

    slot: torch.Tensor
    key_mask: torch.Tensor
    rel: torch.Tensor

    @property
    def num_patches(self) -> int:
        return self.key_mask.shape[0]


def patch_layout(indices: torch.Tensor, order: torch.Tensor, num_frames: int, patch_size: int, shift: int = 0,
                 pos_scale: float = 16.0) -> PatchLayout:
    """Pad each frame's serialized voxels to whole patches, the first patch border moved by `shift`.

    Args:
        indices: (M, 4) spconv indices [frame, x, y, z].
        order: (M,) their serialization order (`serialize`): frames ascending, Z-order within a frame.
    Frame f (n_f voxels) takes ceil((n_f + shift) / P) patches; its voxel of rank j goes to slot
    start_f + shift + j. Every patch then holds one frame only and at least one real voxel.
    """
    frame = indices[order, 0].long()
    counts = torch.bincount(frame, minlength=num_frames)
    first = torch.cumsum(counts, 0) - counts
    rank = torch.arange(len(order), device=order.device) - first[frame]
    padded = torch.where(counts > 0, (counts + shift + patch_size - 1) // patch_size * patch_size, 0)
    start = torch.cumsum(padded, 0) - padded
    slot = torch.empty_like(order)
    slot[order] = start[frame] + shift + rank
    total = int(padded.sum())
    mask = torch.zeros(total, dtype=torch.bool, device=order.device)
    mask[slot] = True
    patch = slot // patch_size
    xyz = indices[:, 1:].float()
    rel = (xyz - scatter_mean(xyz, patch, total // patch_size)[patch]) / pos_scale
    return PatchLayout(slot, mask.view(-1, 1, 1, patch_size), rel)


class TinySAModule(nn.Module):
    """x ← x + proj(MHSA(LN(x) + pos_embed(rel))) within patches; x ← x + MLP(LN(x)). Identity at init."""

    def __init__(self, channels: int = 96, num_heads: int = 6, mlp_ratio: float = 2.0, pos_hidden: int = 32):
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"channels {channels} are not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.norm1 = nn.LayerNorm(channels)
        self.pos_embed = nn.Sequential(nn.Linear(3, pos_hidden), nn.GELU(), nn.Linear(pos_hidden, channels))
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = nn.Linear(channels, channels)
        self.norm2 = nn.LayerNorm(channels)
        hidden = int(channels * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(channels, hidden), nn.GELU(), nn.Linear(hidden, channels))
        for lin in (self.proj, self.mlp[2]):
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    def forward(self, x: torch.Tensor, layout: PatchLayout) -> torch.Tensor:
        """x: (M, C) voxel features → (M, C). Token-wise layers run on the M real voxels only; the
        padded sequence exists just for q, k, v and the attention output."""
        m, c = x.shape
        p = layout.key_mask.shape[-1]
        qkv = self.qkv(self.norm1(x) + self.pos_embed(layout.rel))
        padded = qkv.new_zeros(layout.num_patches * p, 3 * c)
        padded[layout.slot] = qkv
        q, k, v = padded.view(-1, p, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=layout.key_mask)  # (n_patch, H, P, D)
        out = out.transpose(1, 2).reshape(-1, c)[layout.slot]
        x = x + self.proj(out)
        return x + self.mlp(self.norm2(x))


class TinySA(nn.Module):
    """The neck: `depth` TinySAModule blocks over one shared serialization; block i shifts by i·P/2.

    `recompute`: in training, recompute each block in the backward pass (see the module docstring).
    """

    def __init__(self, channels: int = 96, depth: int = 2, num_heads: int = 6, patch_size: int = 128,
                 mlp_ratio: float = 2.0, recompute: bool = True):
        super().__init__()
        self.patch_size, self.recompute = patch_size, recompute
        self.blocks = nn.ModuleList(TinySAModule(channels, num_heads, mlp_ratio) for _ in range(depth))

    def forward(self, x: SparseConvTensor) -> SparseConvTensor:
        order = serialize(x.indices)
        shifts = [(i % 2) * (self.patch_size // 2) for i in range(len(self.blocks))]
        layouts = {s: patch_layout(x.indices, order, x.batch_size, self.patch_size, s) for s in set(shifts)}
        f = x.features
        for block, shift in zip(self.blocks, shifts):
            if self.recompute and torch.is_grad_enabled():
                f = checkpoint(block, f, layouts[shift], use_reentrant=False)
            else:
                f = block(f, layouts[shift])
        return x.replace_feature(f)
