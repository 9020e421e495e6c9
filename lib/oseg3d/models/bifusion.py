"""Bi-Fusion encoder (route ❸): the 3D U-Net (+ Tiny-SA) fused with CLIP's frozen conv1 image features.

Per frame, the 2D map is CLIP ViT-B/16 conv1 → pixel_shuffle(2) (192, 60, 80), read precomputed from
the batch (`clip_pix`, fp16) or computed here for frames without it (`clip_valid` False; counted in
`fallback_frames`), then `conv_reduce` (learnable, both paths) → (256, 60, 80). Three switchable links:
  2D→3D  voxel positions are projected with inv(pose) and the fixed depth intrinsics; the map, projected
         to the stem's 32 channels (1×1 conv), is bilinearly sampled there (zero outside the image or
         behind the camera) and added to the stem output (`fuse_deeper`: also to the four encoder
         levels, sampled at the mean position of each coarse voxel).
  3D→2D  the stem features of the frame's voxels are splatted (mean per cell) onto the 60×80 grid and
         refine the map (concat + 1×1 conv, residual) before it is sampled; needs 2D→3D.
  FiLM   clip_global (768) → (γ, β) on the final 96-channel voxel features.
Every link starts as the identity (zero-initialised projections; γ = 1, β = 0), so a model initialised
from a route ❷ checkpoint (`backbone.` → `bi_encoder.backbone3d.`) starts as the ❷ function.

Memory (SV batch 16, 244k voxels, bf16, H100): peak 5.66 GB against 5.07 GB for route ❷, mostly the
(16, 256, 60, 80) maps; 5.89 GB with `fuse_deeper`.

The frozen conv1 (`clip2d`) stays in eval mode and out of the state dict: its weights always come from
`model.clip_weights` when the model is built, so `clip_source` is true of every checkpoint.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from spconv.pytorch import SparseConvTensor
from torch import nn

from oseg3d.clip.conv1 import pix_and_global
from oseg3d.errors import DataError
from oseg3d.models.batch import PointBatch, Voxels
from oseg3d.models.resunet import INIT_DIM, PLANES, Res16UNet34C
from oseg3d.models.scatter import scatter_mean, segment_count
from oseg3d.models.sparse import fp16_region
from oseg3d.scannet.frames import DEPTH_INTRINSICS

__all__ = ["BiFusionEncoder", "project_points", "sample_map", "splat_to_map"]

IMAGE_SIZE = (480, 640)  # (H, W) of the 2D export the intrinsics belong to
PIX_CHANNELS, REDUCED_CHANNELS, GLOBAL_CHANNELS = 192, 256, 768


def project_points(xyz: torch.Tensor, frame: torch.Tensor, pose: torch.Tensor, intrinsics=DEPTH_INTRINSICS,
                   image_size=IMAGE_SIZE, min_depth: float = 1e-3) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel coordinates of points in their frame's camera.

    Args:
        xyz: (M, 3) points in the (augmented) frame coordinates that `pose` maps the camera into.
        frame: (M,) frame of every point.
        pose: (B, 4, 4) camera-to-world; a similarity (rotation, flip, scale) is inverted exactly.
    Returns:
        uv (M, 2) in pixels, pixel centres at integers (u = fx·x/z + cx), and valid (M,): in front of the
        camera and inside the image [-0.5, W-0.5] × [-0.5, H-0.5].
    """
    fx, fy, cx, cy = intrinsics
    with torch.autocast(xyz.device.type, enabled=False):  # bf16 would move points by pixels
        inv = torch.linalg.inv(pose.double()).float()[frame]  # float64: poses hold ~10 m translations
        cam = torch.einsum("mij,mj->mi", inv[:, :3, :3], xyz.float()) + inv[:, :3, 3]
    z = cam[:, 2]
    zs = z.clamp_min(min_depth)
    uv = torch.stack([fx * cam[:, 0] / zs + cx, fy * cam[:, 1] / zs + cy], 1)
    h, w = image_size
    valid = (z > min_depth) & (uv[:, 0] >= -0.5) & (uv[:, 0] <= w - 0.5) & (uv[:, 1] >= -0.5) & (uv[:, 1] <= h - 0.5)
    return uv, valid


def _map_coords(uv: torch.Tensor, map_hw, image_size=IMAGE_SIZE) -> torch.Tensor:
    """Image pixels → feature-map pixels (centres at integers, both grids covering the same extent)."""
    (h, w), (ih, iw) = map_hw, image_size
    return torch.stack([(uv[:, 0] + 0.5) * (w / iw) - 0.5, (uv[:, 1] + 0.5) * (h / ih) - 0.5], 1)


def sample_map(fmap: torch.Tensor, uv: torch.Tensor, frame: torch.Tensor, valid: torch.Tensor,
               image_size=IMAGE_SIZE) -> torch.Tensor:
    """Bilinear samples (M, C) of the per-frame maps (B, C, h, w) at image pixels uv; 0 where not valid.

    The B maps are stacked into one (C, B·h, w) image and sampled in one `grid_sample` call; clamping
    to each map's own pixel centres (padding 'border') keeps a sample from mixing rows of two frames.
    """
    b, c, h, w = fmap.shape
    xy = _map_coords(uv, (h, w), image_size)
    x = xy[:, 0].clamp(0, w - 1)
    y = xy[:, 1].clamp(0, h - 1) + frame.to(xy.dtype) * h
    # align_corners=True: normalised ±1 are the centres of the first / last pixel, i.e. index i ↔ i
    grid = torch.stack([2 * x / max(w - 1, 1) - 1, 2 * y / max(b * h - 1, 1) - 1], 1).view(1, 1, -1, 2)
    stacked = fmap.transpose(0, 1).reshape(1, c, b * h, w).float()
    with torch.autocast(fmap.device.type, enabled=False):  # the grid stays fp32: in bf16 it would miss rows
        out = F.grid_sample(stacked, grid.float(), mode="bilinear", align_corners=True)
    return out.view(c, -1).t() * valid[:, None].to(out.dtype)


def splat_to_map(feat: torch.Tensor, uv: torch.Tensor, frame: torch.Tensor, valid: torch.Tensor, num_frames: int,
                 map_hw, image_size=IMAGE_SIZE) -> torch.Tensor:
    """Mean of the valid points' features (M, C) per map cell (nearest) → (B, C, h, w); empty cells 0."""
    h, w = map_hw
    xy = _map_coords(uv[valid], map_hw, image_size).round().long()
    cell = (frame[valid] * h + xy[:, 1].clamp(0, h - 1)) * w + xy[:, 0].clamp(0, w - 1)
    grid = scatter_mean(feat[valid], cell, num_frames * h * w)
    return grid.view(num_frames, h, w, -1).permute(0, 3, 1, 2)


def _coarse_positions(xyz: torch.Tensor, vox: Voxels, level: SparseConvTensor,
                      stride: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean position (M_l, 3) of the stride-1 voxels inside each voxel of a coarser sparse level, and
    which level voxels have any (all but a rare grid-edge case)."""
    shape = level.spatial_shape

    def key(b, ijk):
        return ((b * shape[0] + ijk[:, 0]) * shape[1] + ijk[:, 1]) * shape[2] + ijk[:, 2]

    fine, coarse = vox.indices.long(), level.indices.long()
    sorted_keys, perm = torch.sort(key(coarse[:, 0], coarse[:, 1:]))
    # a kernel-2 stride-2 conv maps input i to output ⌊i/2⌋ (an input outside the output grid, possible
    # for grids not sized by `voxelize`, has no level voxel and is left out)
    want = key(fine[:, 0], torch.div(fine[:, 1:], stride, rounding_mode="floor"))
    pos = torch.searchsorted(sorted_keys, want).clamp_max(len(sorted_keys) - 1)
    found = sorted_keys[pos] == want
    target = perm[pos[found]]
    n = len(coarse)
    return scatter_mean(xyz[found], target, n), segment_count(target, n) > 0


class BiFusionEncoder(nn.Module):
    """3D branch (Res16UNet34C + optional Tiny-SA) fused with the frozen CLIP conv1 2D branch."""

    def __init__(self, backbone3d: Res16UNet34C, clip2d: nn.Module, neck: nn.Module | None = None, *,
                 fuse_2d_to_3d: bool = True, fuse_3d_to_2d: bool = True, film_global: bool = True,
                 fuse_deeper: bool = False, clip_source: str = "unknown"):
        super().__init__()
        if fuse_3d_to_2d and not fuse_2d_to_3d:
            raise ValueError("fuse_3d_to_2d refines the map that fuse_2d_to_3d samples: it needs fuse_2d_to_3d")
        if fuse_deeper and not fuse_2d_to_3d:
            raise ValueError("fuse_deeper adds 2D features at deeper levels: it needs fuse_2d_to_3d")
        self.backbone3d, self.neck, self.clip2d = backbone3d, neck, clip2d.eval()
        self.clip2d.requires_grad_(False)
        self.clip_source = clip_source
        self.fallback_frames = 0  # frames whose CLIP features were computed here (no precomputed ones)
        self.conv_reduce = self.refine_2d = self.to_3d = self.film = None
        if fuse_2d_to_3d:
            self.conv_reduce = nn.Sequential(nn.Conv2d(PIX_CHANNELS, REDUCED_CHANNELS, 1, bias=False),
                                             nn.GroupNorm(32, REDUCED_CHANNELS), nn.ReLU(inplace=True))
            levels = (INIT_DIM, *PLANES[:4]) if fuse_deeper else (INIT_DIM,)
            # 1×1 convs on the map before sampling = Linear layers after it (bilinear sampling is linear), but
            # sampling C instead of 256 channels per voxel; and a point outside the image gets exactly 0
            self.to_3d = nn.ModuleList(nn.Conv2d(REDUCED_CHANNELS, c, 1) for c in levels)
            _zero(*self.to_3d)
        if fuse_3d_to_2d:
            self.refine_2d = nn.Conv2d(REDUCED_CHANNELS + INIT_DIM, REDUCED_CHANNELS, 1)
            _zero(self.refine_2d)
        if film_global:
            self.film = nn.Linear(GLOBAL_CHANNELS, 2 * backbone3d.out_channels)  # (Δγ, β): γ = 1 + Δγ
            _zero(self.film)
        self.out_channels = backbone3d.out_channels
        # the frozen conv1 is rebuilt from `clip_weights` every time, never saved or loaded with the model
        self.register_state_dict_post_hook(_drop_clip_keys)
        self.register_load_state_dict_pre_hook(_drop_clip_keys)
        self.register_load_state_dict_post_hook(_forgive_missing_clip_keys)

    def train(self, mode: bool = True) -> "BiFusionEncoder":
        super().train(mode)
        self.clip2d.eval()  # frozen: never in training mode
        return self

    # ---- 2D branch ------------------------------------------------------------------------------
    def clip_features(self, batch: PointBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """(pix (B, 192, 60, 80), global (B, 768)) float32: precomputed where `clip_valid`, else from `image`."""
        n = batch.num_frames
        dev = batch.coord.device
        pix, glob, valid = batch.clip_pix, batch.clip_global, batch.clip_valid
        if pix is None or glob is None:
            valid = torch.zeros(n, dtype=torch.bool, device=dev)
        elif valid is None:
            valid = torch.ones(n, dtype=torch.bool, device=dev)
        if bool(valid.all()):
            return pix.float(), glob.float()
        if batch.image is None:
            raise DataError("batch", f"{int((~valid).sum())} of {n} frames have neither precomputed CLIP features "
                            "nor an image", "build the dataset with data.clip_features=true (and run precompute_clip)")
        need = (~valid).nonzero().squeeze(1)
        with torch.no_grad():
            p, g = pix_and_global(self.clip2d(batch.image[need]))
        pix = p.new_zeros(n, *p.shape[1:]) if pix is None else pix.float().clone()
        glob = g.new_zeros(n, g.shape[1]) if glob is None else glob.float().clone()
        pix[need], glob[need] = p, g
        self.fallback_frames += len(need)
        return pix, glob

    # ---- forward --------------------------------------------------------------------------------
    def forward(self, batch: PointBatch, vox: Voxels, memory=None) -> torch.Tensor:
        """Fused stride-1 voxel features (M, 96) of a voxelised batch (memory: MV adapters or None)."""
        bb = self.backbone3d
        bb._sync_algo(vox.features.device)
        x = SparseConvTensor(vox.features.to(bb.stem.weight.dtype), vox.indices, vox.spatial_shape, vox.batch_size)
        with fp16_region(bb):
            stem = bb.stem_bn(bb.stem(x))
        fmap = xyz = None
        if self.conv_reduce is not None or self.film is not None:
            pix, glob = self.clip_features(batch)
        if self.conv_reduce is not None:
            if batch.pose is None:
                raise DataError("batch", "the Bi-Fusion encoder needs every frame's pose", "keep `pose` in the batch")
            # Voxel positions for projection: the mean of the UNDISTORTED `coord` of the voxel's points. The
            # voxel grid itself comes from the elastic-distorted `voxel_coord`, which the pose knows nothing of.
            xyz = scatter_mean(batch.coord.float(), vox.point2voxel, len(vox.indices))
            uv, valid = project_points(xyz, vox.indices[:, 0].long(), batch.pose.float())
            fmap = self.conv_reduce(pix)
            if self.refine_2d is not None:
                splat = splat_to_map(stem.features.float(), uv, vox.indices[:, 0].long(), valid, vox.batch_size,
                                     fmap.shape[-2:])
                fmap = fmap + self.refine_2d(torch.cat([fmap, splat.to(fmap.dtype)], 1))
            stem = self._add_2d(stem, self.to_3d[0](fmap), uv, valid)
        feats, out = [], stem
        for lvl, (down, bn, stage) in enumerate(zip(bb.downs, bb.down_bns, bb.enc)):  # = Res16UNet34C.encode
            with fp16_region(bb):
                out = stage(bn(down(out)))
            if fmap is not None and len(self.to_3d) > 1:
                pos, has = _coarse_positions(xyz, vox, out, 2 ** (lvl + 1))
                uv_l, valid_l = project_points(pos, out.indices[:, 0].long(), batch.pose.float())
                out = self._add_2d(out, self.to_3d[lvl + 1](fmap), uv_l, valid_l & has)
            feats.append(out)
        if memory is not None:
            feats = memory(feats, vox.origin)
        out = bb.decode(stem, feats)
        if self.neck is not None:
            out = self.neck(out)
        f = out.features
        if self.film is not None:
            dgamma, beta = self.film(glob).to(f.dtype).chunk(2, 1)
            frame = vox.indices[:, 0].long()
            f = torch.addcmul(beta[frame], f, (1 + dgamma)[frame])  # keeps 2 (M, 96) tensors for backward, not 3
        return f

    @staticmethod
    def _add_2d(x: SparseConvTensor, fmap: torch.Tensor, uv: torch.Tensor, valid: torch.Tensor) -> SparseConvTensor:
        sampled = sample_map(fmap, uv, x.indices[:, 0].long(), valid)
        return x.replace_feature(x.features + sampled.to(x.features.dtype))


def _zero(*modules: nn.Module) -> None:
    for m in modules:
        nn.init.zeros_(m.weight)
        if m.bias is not None:
            nn.init.zeros_(m.bias)


def _drop_clip_keys(module, state_dict, prefix, *args):
    """State-dict post-hook and load pre-hook: no `clip2d.` key goes out or comes in."""
    for k in [k for k in state_dict if k.startswith(prefix + "clip2d.")]:
        del state_dict[k]


def _forgive_missing_clip_keys(module, incompatible_keys):
    missing = incompatible_keys.missing_keys
    missing[:] = [k for k in missing if ".clip2d." not in f".{k}"]
