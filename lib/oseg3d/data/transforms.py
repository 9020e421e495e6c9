"""Training augmentations of ESAM (configs `ESAM*/...`, esam.md §2), numpy only and cheap enough for the hot path.

ESAM's train pipelines (SV and MV alike) augment with, in this order:
  1. RandomFlip3D(flip_ratio_bev_horizontal=0.5, vertical=0.5)                 → `RandomFlip`
  2. GlobalRotScaleTrans(rot_range=[-3.14, 3.14], scale_ratio_range=[0.8, 1.2],
                         translation_std=[0.1] * 3)                             → `GlobalRotScaleTrans`
  3. ElasticTransfrom(gran=[6, 20], mag=[40, 160], voxel_size=0.02, p=0.5)      → `ElasticDistortion`
(NormalizePointsColor_ sits between 2 and 3 in ESAM; our collate normalises colour itself.)

Every transform is a pure callable `t(item, rng) -> item` over a frame dict (coord, color, instance, semantic,
superpoint, pose, sample_id; see datasets.py) or over a clip, a list of such frames. On a clip ONE random
draw is applied to every frame, as ESAM augments the concatenated clip once, so the frames stay registered
with each other. Inputs are never modified in place: changed arrays are new, the rest are shared.

The two rigid steps are 4×4 similarities T applied to `coord` (and `voxel_coord` if present) and to `pose`
as `T · pose`: `pose` maps camera points to the augmented coordinates, which later 2D projection needs
(after a flip T has det −1, so `pose` is then a reflection: still exact for projection through inv(pose)).

A Dataset calls `transform(item)` with one argument: wrap with `WithRng(build_train_transforms("mv"), seed)`,
which holds one Generator per DataLoader worker (see `worker_generator`).
"""
from __future__ import annotations

import math
import os
from typing import Callable, Sequence

import numpy as np

__all__ = [
    "RandomFlip", "GlobalRotScaleTrans", "ElasticDistortion", "Compose", "WithRng",
    "apply_similarity", "build_train_transforms", "worker_generator",
]

Item = dict | list  # a frame dict, or a clip: a list of frame dicts
Transform = Callable[[Item, np.random.Generator], Item]
GEOMETRY_KEYS = ("coord", "voxel_coord")  # per-point xyz in metres that move with the scene


def _frames(item: Item) -> tuple[list[dict], bool]:
    """(frames, is_clip): a clip is a list/tuple of frame dicts."""
    return (list(item), True) if isinstance(item, (list, tuple)) else ([item], False)


def apply_similarity(item: Item, t: np.ndarray) -> Item:
    """Apply a 4×4 affine `t` to a frame or clip: xyz → t·xyz for GEOMETRY_KEYS, pose → t · pose.

    Args:
        item: a frame dict or a list of them.
        t: (4, 4) matrix, last row (0, 0, 0, 1).
    Returns:
        the same structure with new coordinate / pose arrays (dtypes kept).
    """
    frames, is_clip = _frames(item)
    out = []
    for f in frames:
        g = dict(f)
        for k in GEOMETRY_KEYS:
            if k in f:
                c = f[k]
                # a flip matrix gives exactly −x: x·(−1) + y·0 + z·0 is exact in floating point
                g[k] = (c @ t[:3, :3].T.astype(c.dtype) + t[:3, 3].astype(c.dtype)).astype(c.dtype, copy=False)
        if "pose" in f:
            g["pose"] = (t @ np.asarray(f["pose"], np.float64)).astype(np.asarray(f["pose"]).dtype)
        out.append(g)
    return out if is_clip else out[0]


class RandomFlip:
    """mmdet3d RandomFlip3D on DEPTH points (ESAM's coord_type): two independent BEV flips.

    mmdet3d's DepthPoints.flip negates x for 'horizontal' and y for 'vertical' (LiDARPoints does the
    reverse, y for horizontal); we follow DEPTH and name the probabilities by the axis negated:
    `p_x` = flip_ratio_bev_horizontal, `p_y` = flip_ratio_bev_vertical (both 0.5 in ESAM).
    """

    def __init__(self, p_x: float = 0.5, p_y: float = 0.5):
        self.p_x, self.p_y = p_x, p_y

    def sample(self, rng: np.random.Generator) -> np.ndarray:
        """Draw the 4×4 flip matrix (horizontal first, then vertical, as mmdet3d draws them)."""
        sx = -1.0 if rng.random() < self.p_x else 1.0
        sy = -1.0 if rng.random() < self.p_y else 1.0
        return np.diag([sx, sy, 1.0, 1.0])

    def __call__(self, item: Item, rng: np.random.Generator) -> Item:
        return apply_similarity(item, self.sample(rng))


class GlobalRotScaleTrans:
    """mmdet3d GlobalRotScaleTrans: x → s·R_z(θ)·x + t, θ ~ U(rot_range), s ~ U(scale_range), t ~ N(0, std²).

    The rotation is counter-clockwise about +z (mmdet3d's sign differs per coordinate mode; with a symmetric
    range it is the same distribution).
    """

    def __init__(self, rot_range: Sequence[float] = (-3.14, 3.14), scale_range: Sequence[float] = (0.8, 1.2),
                 translation_std: Sequence[float] = (0.1, 0.1, 0.1)):
        self.rot_range, self.scale_range = tuple(rot_range), tuple(scale_range)
        self.translation_std = np.asarray(translation_std, np.float64)

    def sample(self, rng: np.random.Generator) -> np.ndarray:
        """Draw the 4×4 similarity T (rotation, then scale, then translation, as mmdet3d applies them)."""
        theta = rng.uniform(*self.rot_range)
        s = rng.uniform(*self.scale_range)
        trans = rng.normal(0.0, self.translation_std)
        c, si = math.cos(theta), math.sin(theta)
        t = np.eye(4)
        t[:3, :3] = s * np.array([[c, -si, 0.0], [si, c, 0.0], [0.0, 0.0, 1.0]])
        t[:3, 3] = trans
        return t

    def __call__(self, item: Item, rng: np.random.Generator) -> Item:
        return apply_similarity(item, self.sample(rng))


def _box3(a: np.ndarray, axis: int) -> np.ndarray:
    """3-tap box filter along `axis` with zero padding (scipy.ndimage.convolve, mode='constant', cval=0)."""
    p, n = np.pad(a, [(1, 1) if i == axis else (0, 0) for i in range(a.ndim)]), a.shape[axis]
    cut = lambda lo: p[(slice(None),) * axis + (slice(lo, lo + n),)]  # noqa: E731
    return (cut(0) + cut(1) + cut(2)) * np.float32(1 / 3)


def _trilinear_block(grid: np.ndarray, origin: np.ndarray, spacing: float, xt: np.ndarray) -> np.ndarray:
    """Trilinear interpolation of a (C, nx, ny, nz) node grid at points xt (3, P) inside it → (C, P).

    Channel-first and float32/int32 throughout: numpy reduces and gathers (P, 3) arrays along axis 0
    ~20x slower, and an int64 index silently promotes the weights to float64.
    """
    ch, nx, ny, nz = grid.shape
    u = (xt - origin[:, None]) * np.float32(1 / spacing)  # ≥ 0, so truncation is floor
    i = np.minimum(u.astype(np.int32), np.array([[nx - 2], [ny - 2], [nz - 2]], np.int32))
    f = u - i.astype(np.float32)
    flat, base = grid.reshape(ch, -1), (i[0] * ny + i[1]) * nz + i[2]
    node = lambda o: np.take(flat, base + o, axis=1)  # noqa: E731
    lerp = lambda a, b, w: a + w * (b - a)  # noqa: E731
    along_z = lambda o: lerp(node(o), node(o + 1), f[2])  # noqa: E731
    along_yz = lambda o: lerp(along_z(o), along_z(o + nz), f[1])  # noqa: E731
    return lerp(along_yz(0), along_yz(ny * nz), f[0])


def _trilinear(grid: np.ndarray, origin: np.ndarray, spacing: float, xt: np.ndarray,
               chunk: int = 16384) -> np.ndarray:
    """`_trilinear_block` over chunks of points: the ~20 temporaries then stay in cache (160k points: 15 → 6 ms)."""
    out = np.empty((grid.shape[0], xt.shape[1]), np.float32)
    for s in range(0, xt.shape[1], chunk):
        out[:, s:s + chunk] = _trilinear_block(grid, origin, spacing, xt[:, s:s + chunk])
    return out


def _smooth_noise(xt: np.ndarray, spacing: float, rng: np.random.Generator) -> np.ndarray:
    """Blurred Gaussian noise (3 channels) on a grid of `spacing` over the bounding box of xt (3, P), at xt.

    One spare node on each side keeps every point inside the grid (ESAM's grid, centred on the origin,
    has such a margin too). The blur is ESAM's: two passes of a 3-tap box per axis, zero padded, so each
    node is a weighted sum of N(0, 1) with Σw ≤ 1 and Σw² ≤ (19/81)³, i.e. a std of at most 0.114.
    """
    lo = xt.min(1) - np.float32(spacing)
    shape = np.floor((xt.max(1) - lo) / spacing).astype(np.int64) + 3
    noise = rng.standard_normal((3, *shape), dtype=np.float32)
    for _ in range(2):
        for axis in (1, 2, 3):
            noise = _box3(noise, axis)
    return _trilinear(noise, lo, spacing, xt)


class ElasticDistortion:
    """ESAM's ElasticTransfrom (from PointGroup): a smooth random displacement, written to `voxel_coord`.

    `voxel_coord` (metres, float32) is what the backbone voxelises; `coord` stays the undistorted geometry,
    as ESAM keeps `points` and writes a separate `elastic_coords` (voxel units; the model multiplies by
    voxel_size, esam.md §2.1 step 8). Undistorted xyz is what the non-learned parts need: `pose` (2D
    projection), GT boxes from the reconstructed mesh (BboxCalculation) and evaluation. NB: ESAM's models
    (mixformer3d.py extract_feat, HEAD 188fc6d) use `elastic_coords·voxel_size` as `all_xyz` whenever it is
    present, i.e. also for the point features' xyz and GeoAwarePooling (superpoint centres sp_xyz); a model
    reproducing that must read `voxel_coord` there too. `voxel_coord` is written even when the p-draw says
    no (an undistorted copy), as ESAM always writes `elastic_coords`, and our collate only passes the key
    on when every frame of a batch has it.

    With probability p (one draw) two stages run in sequence, stage k with granularity gran[k] and
    magnitude mag[k] in VOXEL units (6/40 then 20/160 at 2 cm): x ← x + mag · noise(x), noise being
    blurred Gaussian noise on a grid of spacing 2·gran (ESAM's `linspace(-(b-1)·gran, (b-1)·gran, b)` has
    that spacing: 24 cm and 80 cm) interpolated trilinearly. Per component the displacement has a std of
    at most 0.114·mag voxels (≈ 9 cm and 36 cm: strong, as in PointGroup). ESAM centres its grid on the
    origin and sizes it by max|x|; ours spans the bounding box (same field statistics, fewer nodes for
    MV's world coordinates). On a clip one field spans the frames' joint bounding box (ESAM: frame points
    only, not the appended mesh), so a point seen in two frames moves identically. Grids are tiny (tens
    of nodes per axis), so numpy replaces scipy's convolve + RegularGridInterpolator.

    Timings (this machine: 2-core AMD EPYC, numpy 2.4, p=1, both stages, median): 20,000 points in a
    4×4×2.5 m room 2.3 ms; a clip of 8×20,000 points over 8×8×2.5 m 15 ms (~1.9 ms / 20k). The scipy
    version here: 20 ms / 20k points (WarpConvNet reports ~0.4 s a sample for whole scenes).
    """

    def __init__(self, granularity: Sequence[float] = (6, 20), magnitude: Sequence[float] = (40, 160),
                 voxel_size: float = 0.02, p: float = 0.5):
        if len(granularity) != len(magnitude):
            raise ValueError("granularity and magnitude need one value per stage")
        self.granularity, self.magnitude = tuple(granularity), tuple(magnitude)
        self.voxel_size, self.p = voxel_size, p

    def distort(self, coord: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """All stages on (P, 3) coordinates in metres; returns distorted (P, 3) float32 metres."""
        xt = np.ascontiguousarray(np.asarray(coord, np.float32).T) / np.float32(self.voxel_size)
        for gran, mag in zip(self.granularity, self.magnitude):
            xt = xt + np.float32(mag) * _smooth_noise(xt, 2.0 * gran, rng)
        return (xt * np.float32(self.voxel_size)).T.copy()

    def __call__(self, item: Item, rng: np.random.Generator) -> Item:
        frames, is_clip = _frames(item)
        xyz = np.concatenate([f["coord"] for f in frames]).astype(np.float32, copy=False)  # a new array
        if rng.random() < self.p:
            xyz = self.distort(xyz, rng)
        ends = np.cumsum([len(f["coord"]) for f in frames])[:-1]
        out = [{**f, "voxel_coord": v} for f, v in zip(frames, np.split(xyz, ends))]
        return out if is_clip else out[0]


class Compose:
    """Apply transforms in order, sharing one Generator."""

    def __init__(self, transforms: Sequence[Transform]):
        self.transforms = list(transforms)

    def __call__(self, item: Item, rng: np.random.Generator) -> Item:
        for t in self.transforms:
            item = t(item, rng)
        return item

    def __repr__(self) -> str:
        return f"Compose({[type(t).__name__ for t in self.transforms]})"


def build_train_transforms(mode: str, elastic: bool = True, voxel_size: float = 0.02) -> Compose:
    """ESAM's train augmentations: flip, rotate-scale-translate, elastic (esam.md §2.1 / §2.2).

    Args:
        mode: "sv" (frame items) or "mv" (clip items). ESAM's two lists are the same; clip handling
            (one draw per clip, one elastic field per clip) lives inside each transform.
        elastic: False for the ESAM-E+FF configs, which drop ElasticTransfrom.
        voxel_size: the backbone's voxel size (ElasticTransfrom's magnitudes are in voxels).
    Returns:
        a Compose taking (item, rng); wrap in `WithRng` for a Dataset.
    """
    if mode not in ("sv", "mv"):
        raise ValueError(f"mode must be 'sv' or 'mv', got {mode!r}")
    ts: list[Transform] = [RandomFlip(0.5, 0.5), GlobalRotScaleTrans((-3.14, 3.14), (0.8, 1.2), (0.1, 0.1, 0.1))]
    if elastic:
        ts.append(ElasticDistortion((6, 20), (40, 160), voxel_size=voxel_size, p=0.5))
    return Compose(ts)


def worker_generator(seed: int = 0) -> np.random.Generator:
    """A Generator for this process: seeded from (seed, torch.initial_seed()).

    Inside a DataLoader worker torch has seeded the process with base_seed + worker_id, base_seed drawn
    afresh from the main process's torch generator every time an iterator starts (every epoch, unless
    persistent_workers), so streams differ across workers and epochs and repeat under torch.manual_seed.
    In the main process (num_workers=0) it is the main generator's initial seed.
    """
    import torch  # lazy: keeps this module importable (and fast) without torch

    return np.random.default_rng([seed, torch.initial_seed()])


class WithRng:
    """Adapt `transform(item, rng)` to the Dataset's `transform(item)`, with one Generator per process.

    The generator is created on first use in each process (see `worker_generator`) and then advances
    call by call, so forked workers never share the parent's stream.
    """

    def __init__(self, transform: Transform, seed: int = 0):
        self.transform, self.seed = transform, seed
        self._rng: np.random.Generator | None = None
        self._key: tuple | None = None

    def _generator(self) -> np.random.Generator:
        import torch

        key = (os.getpid(), torch.initial_seed())
        if self._rng is None or key != self._key:
            self._rng, self._key = worker_generator(self.seed), key
        return self._rng

    def __call__(self, item: Item) -> Item:
        return self.transform(item, self._generator())
