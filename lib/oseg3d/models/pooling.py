"""GeoAwarePooling: point features → superpoint features, weighted by local geometry (esam.md §3.4).

Each point's position is normalised inside its superpoint (centred, divided by the superpoint's
largest extent + 1 cm), embedded by a small MLP; the superpoint's max-pooled embedding is its global
shape code; a per-point weight in (0, 2) from [local, global] re-weights the mean of point features.
The paper's ablation: 47.2 AP vs 45.9 with plain average pooling.
"""
from __future__ import annotations

import torch
from torch import nn

from oseg3d.models.scatter import scatter_max, scatter_mean

__all__ = ["GeoAwarePooling"]


class GeoAwarePooling(nn.Module):
    """Superpoint pooling with geometry-aware weights (0.03 M parameters at 96 channels)."""

    def __init__(self, channels: int = 96):
        super().__init__()
        self.pts_proj = nn.Sequential(nn.Linear(3, channels), nn.LayerNorm(channels), nn.ReLU(),
                                      nn.Linear(channels, channels), nn.LayerNorm(channels))
        self.weight_mlp = nn.Sequential(nn.Linear(2 * channels, channels), nn.LayerNorm(channels), nn.ReLU(),
                                        nn.Linear(channels, 1))

    @staticmethod
    def normalize_xyz(xyz: torch.Tensor, sp: torch.Tensor, n_sp: int) -> torch.Tensor:
        """Centre each superpoint and scale by its largest axis extent (+1 cm)."""
        center = scatter_mean(xyz, sp, n_sp)
        hi = scatter_max(xyz, sp, n_sp)
        lo = -scatter_max(-xyz, sp, n_sp)
        diameter = (hi - lo).max(1).values + 0.01
        return (xyz - center[sp]) / diameter[sp, None]

    def forward(self, xyz: torch.Tensor, feat: torch.Tensor, sp: torch.Tensor, n_sp: int):
        """Pool points into superpoints.

        Args:
            xyz: (N, 3) point coordinates.
            feat: (N, C) point features.
            sp: (N,) long superpoint index (global over the batch).
            n_sp: number of superpoints.
        Returns:
            (sp_feat (n_sp, C), sp_xyz (n_sp, 3) superpoint centres, point weights (N,)).
        """
        z_local = self.pts_proj(self.normalize_xyz(xyz.float(), sp, n_sp).to(feat.dtype))
        z_global = scatter_max(z_local, sp, n_sp)
        # index_select, not z_global[sp]: a one-index_add backward instead of a sort-based index_put
        w = 2 * torch.sigmoid(self.weight_mlp(torch.cat([z_local, z_global.index_select(0, sp)], 1)))
        sp_feat = scatter_mean(feat * w, sp, n_sp) + z_global
        return sp_feat, scatter_mean(xyz.float(), sp, n_sp), w.squeeze(1)
