"""Superpoints of one RGB-D frame, as ESAM builds them (reference/esam.md §1.3 steps 1 and 5).

2D masks are painted onto the image in descending area (smaller masks overwrite larger ones), each
sampled point takes the id of its pixel, and points no mask covers are clustered with k-means on
xyz + rgb (rgb in 0..255, so colour dominates, as ESAM does); ids are then made contiguous.

Mask generators:
- `graph` (default, no weights): graph-based segmentation of the image — pixels are joined when
  colour and relative depth change little across the edge; connected components above a minimum
  size become masks. Runs at half resolution (a few ms per frame), which is enough because only the
  20,000 sampled pixels are ever looked up.
- `sam` / `fastsam`: Segment Anything (ViT-H) or FastSAM-x with the user's checkpoint, ESAM's settings.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Protocol

import numpy as np
from scipy import ndimage
from scipy.cluster.vq import kmeans2

from oseg3d.errors import DataError

__all__ = ["MaskGenerator", "GraphSegmenter", "build_mask_generator", "paint_masks", "assign_superpoints"]


class MaskGenerator(Protocol):
    """Turns a frame into a label image (H, W) int32: mask id per pixel, -1 where no mask."""

    def __call__(self, color: np.ndarray, depth: np.ndarray) -> np.ndarray: ...


def paint_masks(masks: list[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """Paint boolean masks by descending area so smaller masks overwrite larger ones; -1 = unpainted."""
    label = np.full(shape, -1, np.int32)
    areas = [int(m.sum()) for m in masks]
    for i in np.argsort(areas, kind="stable")[::-1]:
        label[masks[i]] = i
    return label


class GraphSegmenter:
    """Weights-free graph segmentation of colour + depth (the default generator).

    Args:
        color_threshold: max colour step between neighbours, as a fraction of the rgb range.
        depth_threshold: max relative depth step between neighbours.
        min_size: components smaller than this share of the (half-resolution) image stay unpainted.
    """

    def __init__(self, color_threshold: float = 0.045, depth_threshold: float = 0.02, normal_threshold: float = 0.95,
                 min_size: float = 0.002):
        self.color_threshold, self.depth_threshold = color_threshold, depth_threshold
        self.normal_threshold, self.min_size = normal_threshold, min_size

    @staticmethod
    @lru_cache(maxsize=4)
    def _pixel_grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
        v, u = np.mgrid[0:h, 0:w].astype(np.float32)
        return u - w / 2, v - h / 2

    @classmethod
    def _normals(cls, d: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Unit normals (x, y, z planes) of the depth map's surface at half resolution.

        Points are (u·d, v·d, f·d) up to a common scale, which is all a direction needs.
        """
        u, v = cls._pixel_grid(*d.shape)
        p = (u * d, v * d, d * np.float32(577.87 / 2))

        def diff(a, axis):  # ±2 px: depth noise would swamp ±1 px differences
            g = np.zeros_like(a)
            if axis:
                g[:, 2:-2] = a[:, 4:] - a[:, :-4]
            else:
                g[2:-2] = a[4:] - a[:-4]
            return g

        (ax, ay, az), (bx, by, bz) = (diff(c, 1) for c in p), (diff(c, 0) for c in p)
        nx, ny, nz = ay * bz - az * by, az * bx - ax * bz, ax * by - ay * bx
        inv = 1.0 / np.maximum(np.sqrt(nx * nx + ny * ny + nz * nz), 1e-9)
        return nx * inv, ny * inv, nz * inv

    def __call__(self, color: np.ndarray, depth: np.ndarray) -> np.ndarray:
        h, w = depth.shape
        h2, w2 = h // 2, w // 2
        col = color[: 2 * h2, : 2 * w2].astype(np.float32)
        # 2×2 mean then 3×3 box filter: sensor noise would otherwise cut every edge
        c = (col[0::2, 0::2] + col[1::2, 0::2] + col[0::2, 1::2] + col[1::2, 1::2]) * (0.25 / 255.0)
        c = ndimage.uniform_filter(c, size=(3, 3, 1))
        d = np.ascontiguousarray(depth[: 2 * h2 : 2, : 2 * w2 : 2], np.float32)
        valid = d > 0
        # fill sensor dropouts before smoothing, or every hole grows a ring of bogus normals
        filled = np.where(valid, d, ndimage.maximum_filter(d, 3))
        n = self._normals(ndimage.uniform_filter(filled, 5))
        # A pixel is a boundary when the edge to its right or lower neighbour is cut (colour, depth or
        # crease); the other pixels are labelled by 4-connectivity, which is the edge graph's
        # components up to one-pixel boundaries, at a fraction of a sparse-graph search's cost.
        inner = valid.copy()
        for a, b in (((slice(None), slice(0, -1)), (slice(None), slice(1, None))),
                     ((slice(0, -1), slice(None)), (slice(1, None), slice(None)))):
            diff = np.abs(c[a] - c[b])
            cut = np.maximum(np.maximum(diff[..., 0], diff[..., 1]), diff[..., 2]) >= self.color_threshold
            da, db = d[a], d[b]
            cut |= np.abs(da - db) >= self.depth_threshold * np.minimum(da, db)
            cut |= n[0][a] * n[0][b] + n[1][a] * n[1][b] + n[2][a] * n[2][b] <= self.normal_threshold
            inner[a] &= ~cut
        comp, num = ndimage.label(inner)
        sizes = np.bincount(comp.reshape(-1), minlength=num + 1)
        big = sizes >= self.min_size * h2 * w2
        big[0] = False
        remap = np.full(num + 1, -1, np.int32)
        remap[big] = np.arange(int(big.sum()), dtype=np.int32)
        small = remap[comp]
        # boundary pixels join a neighbouring segment (one dilation step), holes stay unpainted
        grown = ndimage.maximum_filter(small, 3)
        small = np.where((small < 0) & valid, grown, small)
        full = np.full((h, w), -1, np.int32)
        full[: 2 * h2, : 2 * w2] = small.repeat(2, 0).repeat(2, 1)
        return full


class _SamGenerator:
    """Segment Anything automatic masks (ESAM's SAM route), default parameters."""

    def __init__(self, checkpoint: str, device: str):
        try:
            from segment_anything import SamAutomaticMaskGenerator, build_sam  # type: ignore
        except ImportError:
            raise DataError("segment_anything", "package not installed", "pip install segment-anything, or use --superpoints graph") from None
        self._gen = SamAutomaticMaskGenerator(build_sam(checkpoint=checkpoint).to(device))

    def __call__(self, color, depth):
        masks = [m["segmentation"] for m in self._gen.generate(color)]
        return paint_masks(masks, depth.shape)


class _FastSamGenerator:
    """FastSAM-x masks with ESAM's settings (conf 0.1, iou 0.9, retried at iou 0.7)."""

    def __init__(self, checkpoint: str, device: str):
        try:
            from ultralytics import FastSAM  # type: ignore
        except ImportError:
            raise DataError("ultralytics", "package not installed (needed for FastSAM)", "pip install ultralytics, or use --superpoints graph") from None
        self._model, self._device = FastSAM(checkpoint), device

    def __call__(self, color, depth):
        for iou in (0.9, 0.7):
            try:
                res = self._model(color, device=self._device, retina_masks=True, imgsz=640, conf=0.1, iou=iou, verbose=False)
                data = res[0].masks.data.cpu().numpy().astype(bool)
                return paint_masks(list(data), depth.shape)
            except (AttributeError, RuntimeError, IndexError):
                continue
        return np.full(depth.shape, -1, np.int32)


def build_mask_generator(name: str, checkpoint: str | None = None, device: str = "cpu") -> MaskGenerator:
    """`graph` | `sam` | `fastsam` (the latter two need `checkpoint`, a local file)."""
    if name == "graph":
        return GraphSegmenter()
    if name not in ("sam", "fastsam"):
        raise DataError("--superpoints", f"unknown generator {name!r}", "use graph, sam or fastsam")
    if not checkpoint or not Path(checkpoint).is_file():
        want = "sam_vit_h_4b8939.pth" if name == "sam" else "FastSAM-x.pt"
        raise DataError(checkpoint or "--sam-checkpoint", f"{name} needs its checkpoint file", f"pass --sam-checkpoint /path/to/{want}")
    return (_SamGenerator if name == "sam" else _FastSamGenerator)(checkpoint, device)


def assign_superpoints(
    pixel_label: np.ndarray, xyz: np.ndarray, rgb: np.ndarray, k: int, rng: np.random.Generator
) -> np.ndarray:
    """Superpoint id per sampled point: painted mask id, else a k-means cluster of the unpainted points.

    Args:
        pixel_label: (P,) mask id of each point's pixel, -1 = unpainted.
        xyz, rgb: (P, 3) point coordinates (m) and colours (0..255) used for the k-means.
        k: clusters for unpainted points (ESAM: SAM SV 10, MV 8; one cluster when too few points).
    Returns:
        (P,) int32 ids, contiguous 0..K-1.
    """
    sp = pixel_label.astype(np.int64)
    free = sp < 0
    n_free = int(free.sum())
    if n_free:
        kk = k if n_free >= 4 * k else 1
        if kk > 1:
            data = np.concatenate([xyz[free], rgb[free]], 1).astype(np.float64)
            _, lab = kmeans2(data, kk, minit="++", seed=rng, check_finite=False)
        else:
            lab = np.zeros(n_free, np.int64)
        sp[free] = sp.max(initial=-1) + 1 + lab
    return np.unique(sp, return_inverse=True)[1].astype(np.int32).reshape(-1)
