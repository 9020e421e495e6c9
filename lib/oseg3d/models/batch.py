"""The batch structure shared by the model, the losses and the metrics, and 2 cm voxelisation.

Frames are concatenated Pointcept-style: `offset[i]` is the end of frame i in the point arrays, so a
batch of ragged frames needs no padding. Voxelisation averages the features of the points in each
2 cm cell (MinkowskiEngine's default quantisation, which ESAM uses) and keeps `point2voxel` to slice
voxel features back to the points.
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch

from oseg3d.models.scatter import scatter_mean

__all__ = ["PointBatch", "Voxels", "voxelize", "GRID_ALIGN"]

GRID_ALIGN = 16  # voxel origins are multiples of the backbone's deepest stride, so levels align across frames


@dataclass
class PointBatch:
    """A batch of frames (SV: independent frames; MV: the t-th frames of B clips).

    Attributes:
        coord: (N, 3) float xyz in metres (after augmentation).
        feat: (N, 3) float normalised colour (the backbone's input features).
        offset: (B,) long cumulative point counts: frame i is points [offset[i-1], offset[i]).
        superpoint: (N,) long superpoint id, local to its frame (0..n_sp_i-1).
        instance: (N,) long scene-global instance id (0 = none) or None at inference.
        semantic: (N,) long mapped semantic class (num_sem = ignore) or None.
        voxel_coord: (N, 3) float coordinates used for voxelisation (elastic-distorted xyz), or None = coord.
        pose: (B, 4, 4) camera-to-world, or None.
        clip_pix: (B, 192, 60, 80) fp16 precomputed CLIP conv1 pixel features (zeros where missing), or None.
        clip_global: (B, 768) fp16 precomputed CLIP conv1 global features, or None.
        clip_valid: (B,) bool, which frames have precomputed features, or None (= all, when clip_pix is set).
        image: (B, 3, 480, 640) uint8 RGB for the frames without features (zeros for the others), or None.
    """

    coord: torch.Tensor
    feat: torch.Tensor
    offset: torch.Tensor
    superpoint: torch.Tensor
    instance: torch.Tensor | None = None
    semantic: torch.Tensor | None = None
    voxel_coord: torch.Tensor | None = None
    pose: torch.Tensor | None = None
    clip_pix: torch.Tensor | None = None
    clip_global: torch.Tensor | None = None
    clip_valid: torch.Tensor | None = None
    image: torch.Tensor | None = None

    @property
    def num_frames(self) -> int:
        return len(self.offset)

    @property
    def batch_index(self) -> torch.Tensor:
        """(N,) frame index of every point."""
        counts = torch.diff(self.offset, prepend=self.offset.new_zeros(1))
        return torch.repeat_interleave(torch.arange(len(counts), device=self.offset.device), counts)

    def split(self, t: torch.Tensor) -> list[torch.Tensor]:
        """Split a per-point tensor into per-frame pieces."""
        counts = torch.diff(self.offset, prepend=self.offset.new_zeros(1)).tolist()
        return list(torch.split(t, counts))

    def to(self, device, non_blocking: bool = False) -> "PointBatch":
        return replace(self, **{f.name: getattr(self, f.name).to(device, non_blocking=non_blocking)
                                for f in fields(self) if isinstance(getattr(self, f.name), torch.Tensor)})

    @classmethod
    def from_dict(cls, d: dict) -> "PointBatch":
        """Build from a collated dict with the same keys (the data loaders' output)."""
        return cls(**{f.name: d.get(f.name) for f in fields(cls)})


@dataclass
class Voxels:
    """Voxelised batch.

    Attributes:
        indices: (M, 4) int32 [frame, x, y, z], non-negative (spconv's layout).
        features: (M, C) mean feature per voxel.
        point2voxel: (N,) long voxel of every point.
        origin: (B, 3) long absolute voxel coordinate of each frame's index (0, 0, 0); multiples of GRID_ALIGN.
        spatial_shape: [X, Y, Z] grid size.
        batch_size: number of frames.
    """

    indices: torch.Tensor
    features: torch.Tensor
    point2voxel: torch.Tensor
    origin: torch.Tensor
    spatial_shape: list[int]
    batch_size: int


def voxelize(coord: torch.Tensor, feat: torch.Tensor, batch_index: torch.Tensor, batch_size: int,
             voxel_size: float = 0.02) -> Voxels:
    """Quantise points to `voxel_size` cells per frame, averaging features.

    Each frame's origin is its minimum cell rounded down to a multiple of GRID_ALIGN, so the absolute
    cell of a voxel at any backbone level is `local + origin / stride` exactly (the memory adapters
    rely on this to accumulate voxels across frames).
    """
    grid = torch.floor(coord / voxel_size).long()
    big = torch.iinfo(torch.long).max
    mins = torch.full((batch_size, 3), big, dtype=torch.long, device=coord.device)
    mins = mins.scatter_reduce(0, batch_index[:, None].expand(-1, 3), grid, "amin", include_self=True)
    origin = torch.div(mins, GRID_ALIGN, rounding_mode="floor") * GRID_ALIGN
    local = grid - origin[batch_index]
    # a whole number of GRID_ALIGN cells: spconv's kernel-2 stride-2 conv gives an odd size X the output
    # size (X - 2) // 2 + 1, which silently drops input row X - 1 from every coarser level
    shape = (local.max(0).values + GRID_ALIGN) // GRID_ALIGN * GRID_ALIGN
    key = ((batch_index * shape[0] + local[:, 0]) * shape[1] + local[:, 1]) * shape[2] + local[:, 2]
    uniq, inverse = torch.unique(key, return_inverse=True)
    m = len(uniq)
    feats = scatter_mean(feat, inverse, m)
    z = uniq % shape[2]
    rest = uniq // shape[2]
    y = rest % shape[1]
    rest = rest // shape[1]
    x = rest % shape[0]
    b = rest // shape[0]
    indices = torch.stack([b, x, y, z], 1).int()
    return Voxels(indices, feats, inverse, origin, [int(s) for s in shape.tolist()], batch_size)
