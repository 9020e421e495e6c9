"""Multi-level memory adapters for online MV segmentation (Online3D / ESAM, esam.md §3.3).

Per encoder level (32, 64, 128, 256 channels) a sparse voxel memory accumulates the features of all
earlier frames of the clip or scene, in absolute voxel coordinates. For each new frame the memory and
the frame are united (max at identical voxels), cropped to 2.5× the frame's box, and passed through a
dilation-1 and a dilation-3 3³ conv branch plus the crop's global mean; a pointwise projection of the
three is added to the frame's features (residual, then ReLU). All adapter weights start at zero, so an
untrained adapter is the identity and an SV checkpoint loads into the MV model unchanged.
"""
from __future__ import annotations

from dataclasses import dataclass

import spconv.pytorch as spconv
import torch
from spconv.pytorch import SparseConvTensor
from torch import nn

from oseg3d.models.scatter import scatter_max, scatter_mean
from oseg3d.models.sparse import algo_for, fp16_region, set_conv_algo

__all__ = ["MemoryAdapter", "MultilevelMemory", "voxel_keys"]

_R, _H = 1 << 18, 1 << 17  # ±131k voxels per axis, up to 512 samples in one int64 key


def voxel_keys(b: torch.Tensor, xyz: torch.Tensor) -> torch.Tensor:
    """One int64 key per (sample, x, y, z); coordinates may be negative (absolute voxel units)."""
    xyz = xyz.long() + _H
    return ((b.long() * _R + xyz[:, 0]) * _R + xyz[:, 1]) * _R + xyz[:, 2]


@dataclass
class _LevelState:
    batch: torch.Tensor  # (M,) sample index
    coord: torch.Tensor  # (M, 3) absolute voxel coordinates at this level
    feat: torch.Tensor  # (M, C)
    stamp: torch.Tensor  # (M,) frame counter when last seen


class MemoryAdapter(nn.Module):
    """The adapter of one level (57·C² + 6·C parameters)."""

    def __init__(self, channels: int, crop_scale: float = 2.5, bn_momentum: float = 0.02):
        super().__init__()
        c = channels
        self.conv_d1 = spconv.SubMConv3d(c, c, 3, dilation=1, bias=False)
        self.conv_d3 = spconv.SubMConv3d(c, c, 3, dilation=3, bias=False)
        self.bn_d1, self.bn_d3 = nn.BatchNorm1d(c, momentum=bn_momentum), nn.BatchNorm1d(c, momentum=bn_momentum)
        self.proj = nn.Linear(3 * c, c, bias=False)  # ESAM's ConvTranspose 1³ = a pointwise projection
        self.bn_proj = nn.BatchNorm1d(c, momentum=bn_momentum)
        self.crop_scale = crop_scale
        for w in (self.conv_d1.weight, self.conv_d3.weight, self.proj.weight):
            nn.init.zeros_(w)  # start as identity
        self._algo_device = None

    def forward(self, cur_b, cur_xyz, cur_feat, state: _LevelState | None, t: int, queue: int,
                nb: int | None = None):
        """Adapt the current frame's features with the memory (`nb` samples, default: counted); returns
        (features, new state).

        Every boolean selection is a host sync (its size is data); there is one per selection here, and
        none for the whole-history memory (queue ≤ 0), which keeps everything."""
        if state is None:
            ub, uxyz, ufeat, ustamp = cur_b, cur_xyz, cur_feat, torch.full_like(cur_b, t)
        else:
            sb, sxyz, sfeat, sstamp = state.batch, state.coord, state.feat, state.stamp
            if queue > 0:
                keep = torch.nonzero(sstamp > t - queue).squeeze(1)
                sb, sxyz, sfeat, sstamp = sb[keep], sxyz[keep], sfeat[keep], sstamp[keep]
            all_b = torch.cat([sb, cur_b])
            all_xyz = torch.cat([sxyz, cur_xyz])
            keys, inv = torch.unique(voxel_keys(all_b, all_xyz), return_inverse=True)
            m = len(keys)
            ufeat = scatter_max(torch.cat([sfeat.to(cur_feat.dtype), cur_feat]), inv, m)
            first = torch.full((m,), len(inv), dtype=torch.long, device=inv.device)
            first = first.scatter_reduce(0, inv, torch.arange(len(inv), device=inv.device), "amin")
            ub, uxyz = all_b[first], all_xyz[first]
            ustamp = torch.cat([sstamp, torch.full_like(cur_b, t)])
            ustamp = torch.zeros(m, dtype=torch.long, device=inv.device).scatter_reduce(0, inv, ustamp, "amax", include_self=False)
        new_state = _LevelState(ub, uxyz, ufeat, ustamp)
        # crop the united memory to 2.5× the current frame's box, per sample
        nb = int(cur_b.max()) + 1 if nb is None else nb
        big = torch.iinfo(torch.long).max
        lo = torch.full((nb, 3), big, dtype=torch.long, device=cur_b.device).scatter_reduce(
            0, cur_b[:, None].expand(-1, 3), cur_xyz, "amin")
        hi = torch.full((nb, 3), -big, dtype=torch.long, device=cur_b.device).scatter_reduce(
            0, cur_b[:, None].expand(-1, 3), cur_xyz, "amax")
        center, half = (lo + hi).float() / 2, (hi - lo).float() / 2 * self.crop_scale + 1
        inside = torch.nonzero(((uxyz.float() - center[ub]).abs() <= half[ub]).all(1)).squeeze(1)
        cb, cxyz, cfeat = ub[inside], uxyz[inside], ufeat[inside]
        base = lo[cb] - (half[cb].ceil().long())
        local = (cxyz - base).int()
        t_in = SparseConvTensor(cfeat, torch.cat([cb[:, None].int(), local], 1),
                                (local.max(0).values + 1).tolist(), nb)
        if self._algo_device != cfeat.device.type:  # once per device, not a module walk every frame
            set_conv_algo(self, algo_for(cfeat.device))
            self._algo_device = cfeat.device.type
        b1 = torch.relu(self.bn_d1(self.conv_d1(t_in).features))
        b3 = torch.relu(self.bn_d3(self.conv_d3(t_in).features))
        g = scatter_mean(cfeat, cb, nb)[cb]
        y = self.bn_proj(self.proj(torch.cat([b1, b3, g.to(b1.dtype)], 1)))
        # the current voxels are inside the crop (it contains their box): look up their rows
        ckeys = voxel_keys(cb, cxyz)
        order = torch.argsort(ckeys)
        pos = order[torch.searchsorted(ckeys[order], voxel_keys(cur_b, cur_xyz))]
        return torch.relu(cur_feat + y[pos].to(cur_feat.dtype)), new_state


class MultilevelMemory(nn.Module):
    """Adapters for the four encoder levels; holds the per-level memory between frames.

    Args:
        channels: encoder channels per level (Res16UNet34C: 32, 64, 128, 256).
        queue: frames kept in memory; -1 = the whole history (ESAM's setting).
    """

    def __init__(self, channels=(32, 64, 128, 256), queue: int = -1, crop_scale: float = 2.5):
        super().__init__()
        self.adapters = nn.ModuleList(MemoryAdapter(c, crop_scale) for c in channels)
        self.queue = queue
        self.reset()

    def reset(self) -> None:
        """Forget everything (call at the start of every clip / scene)."""
        self._states: list[_LevelState | None] = [None] * len(self.adapters)
        self._t = 0

    def forward(self, feats: list[SparseConvTensor], origin: torch.Tensor) -> list[SparseConvTensor]:
        """Adapt the encoder outputs of the current frames (one per sample) and remember them.

        Args:
            feats: encoder outputs at strides 2, 4, 8, 16 (spconv tensors, batch index = sample).
            origin: (B, 3) absolute stride-1 voxel coordinate of each sample's index origin.
        """
        out = []
        with fp16_region(self):
            out = self._adapt(feats, origin)
        self._t += 1
        return out

    def _adapt(self, feats: list[SparseConvTensor], origin: torch.Tensor) -> list[SparseConvTensor]:
        out = []
        for lvl, (x, adapter) in enumerate(zip(feats, self.adapters)):
            stride = 2 ** (lvl + 1)
            b = x.indices[:, 0].long()
            xyz = x.indices[:, 1:].long() + torch.div(origin, stride, rounding_mode="floor")[b]
            f, self._states[lvl] = adapter(b, xyz, x.features, self._states[lvl], self._t, self.queue, x.batch_size)
            out.append(x.replace_feature(f))
        return out
