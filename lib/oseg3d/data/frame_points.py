"""One RGB-D frame → exactly `num_points` labelled points (reference/esam.md §1.3 steps 2-6).

Back-project valid depth with the fixed intrinsics and the camera-to-world pose, sample to a fixed
count (with replacement when short), label each point with its nearest axis-aligned mesh vertex's
instance, drop labels outside that instance's box (+5 cm), and attach superpoints.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pykdtree.kdtree import KDTree

from oseg3d.data.superpoints import MaskGenerator, assign_superpoints
from oseg3d.scannet.annotations import MeshGT
from oseg3d.scannet.frames import Frame, FrameSkip

__all__ = ["SceneGT", "FramePoints", "frame_to_points", "BOX_MARGIN", "MIN_DEPTH_M"]

BOX_MARGIN = 0.05  # m, ESAM's select_points_in_bbox margin
MIN_DEPTH_M = 0.1 / 1000.0  # ESAM keeps depth > 0.1 in raw millimetres: every non-zero reading


@dataclass
class SceneGT:
    """What labelling a frame needs from its scene: aligned mesh KD-tree and per-vertex/instance GT."""

    tree: KDTree  # pykdtree: ~2× scipy's cKDTree for 1-NN of 20k points, float32 native
    vertex_instance: np.ndarray
    instance_semantic: np.ndarray  # instance id → raw semantic id (0 for 0)
    box_lo: np.ndarray  # instance id → aligned box min − margin (rows of absent ids: +inf)
    box_hi: np.ndarray
    axis_align: np.ndarray

    @classmethod
    def from_mesh(cls, vertices_aligned: np.ndarray, gt: MeshGT, axis_align: np.ndarray) -> "SceneGT":
        n = int(gt.instance.max(initial=0)) + 1
        sem = np.zeros(n, np.int32)
        sem[gt.instance] = gt.semantic
        sem[0] = 0
        lo, hi = np.full((n, 3), np.inf, np.float32), np.full((n, 3), -np.inf, np.float32)
        for i, box in gt.boxes.items():
            lo[i], hi[i] = box[:3] - BOX_MARGIN, box[3:] + BOX_MARGIN
        return cls(KDTree(np.ascontiguousarray(vertices_aligned, np.float32)), gt.instance, sem, lo, hi, axis_align)


@dataclass
class FramePoints:
    """Points of one frame: xyz (scan frame, or centred for SV) + rgb 0..255, and their labels."""

    points: np.ndarray  # (P, 6) float32
    instance: np.ndarray  # (P,) int32 scene-global object id + 1, 0 = none
    semantic: np.ndarray  # (P,) int32 raw semantic id
    superpoint: np.ndarray  # (P,) int32 contiguous
    center: np.ndarray  # (3,) subtracted from xyz (zeros for MV)


def _backproject(frame: Frame, intrinsics, rng: np.random.Generator, num_points: int):
    fx, fy, cx, cy = intrinsics
    h, w = frame.depth.shape
    # The intrinsics hold for one image size (ESAM's: 640×480 depth). A frame exported at another size
    # would be back-projected to the wrong place without any error: skip it (counted) instead.
    if abs(cx - (w - 1) / 2) > w / 8 or abs(cy - (h - 1) / 2) > h / 8:
        raise FrameSkip("wrong_size", f"depth/{frame.index}.png",
                        f"{w}×{h} image, but the intrinsics' principal point is ({cx}, {cy})")
    v, u = np.nonzero(frame.depth > MIN_DEPTH_M)
    if len(v) == 0:
        raise FrameSkip("no_valid_depth", f"depth/{frame.index}.png")
    pick = rng.choice(len(v), num_points, replace=len(v) < num_points)
    v, u = v[pick], u[pick]
    z = frame.depth[v, u]
    cam = np.stack([(u - cx) * z / fx, (v - cy) * z / fy, z], 1)
    xyz = cam @ frame.pose[:3, :3].T + frame.pose[:3, 3]
    return xyz.astype(np.float32), frame.color[v, u].astype(np.float32), v, u


def frame_to_points(
    frame: Frame,
    scene: SceneGT,
    masks: MaskGenerator,
    rng: np.random.Generator,
    *,
    num_points: int = 20000,
    kmeans_k: int = 10,
    center: bool = False,
    intrinsics=(577.870605, 577.870605, 319.5, 239.5),
) -> FramePoints:
    """Turn one decoded frame into `num_points` labelled points.

    Args:
        frame: decoded frame (pose camera-to-world, unaligned scan frame).
        scene: the scene's mesh GT.
        masks: 2D mask generator for superpoints.
        rng: per-frame generator (sampling and k-means), so results do not depend on scheduling.
        num_points: points per frame (ESAM: 20,000).
        kmeans_k: clusters for points no 2D mask covers.
        center: subtract the mean xyz (SV) or keep scan coordinates (MV).
        intrinsics: depth intrinsics (fx, fy, cx, cy).
    """
    xyz, rgb, v, u = _backproject(frame, intrinsics, rng, num_points)
    aligned = xyz @ scene.axis_align[:3, :3].T.astype(np.float32) + scene.axis_align[:3, 3].astype(np.float32)
    _, nn = scene.tree.query(np.ascontiguousarray(aligned), k=1)
    inst = scene.vertex_instance[nn].astype(np.int32)
    inside = ((aligned >= scene.box_lo[inst]) & (aligned <= scene.box_hi[inst])).all(1)
    inst[~inside] = 0
    sem = scene.instance_semantic[inst]
    sp = assign_superpoints(masks(frame.color, frame.depth)[v, u], xyz, rgb, kmeans_k, rng)
    c = xyz.mean(0) if center else np.zeros(3, np.float32)
    pts = np.concatenate([xyz - c, rgb], 1).astype(np.float32)
    return FramePoints(pts, inst, sem.astype(np.int32), sp, c.astype(np.float32))
