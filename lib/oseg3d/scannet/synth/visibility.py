"""Keep only the mesh a scan could have reconstructed: vertices some exported frame actually saw.

A ScanNet mesh is fused from the very frames of its 2D export, so every surface in it was observed.
A synthetic room tessellates every box face, hidden ones included (undersides, backs against walls,
most of the ceiling); left in, they would be GT that no online method can predict, and an oracle would
score far below 100 % on the mesh. A vertex counts as observed when it projects inside a frame in front
of the camera and its depth agrees with the rendered depth map.
"""
from __future__ import annotations

import numpy as np

from oseg3d.scannet.synth.mesh import AnnotatedMesh
from oseg3d.scannet.ply import Mesh

__all__ = ["observed_vertices", "crop_to_observed"]


def observed_vertices(vertices: np.ndarray, poses: np.ndarray, depths_mm: list[np.ndarray], intrinsics,
                      tol_m: float = 0.05, tol_rel: float = 0.02) -> np.ndarray:
    """(N,) bool: seen in at least one frame.

    Args:
        vertices: (N, 3) vertices in the frames' world coordinates.
        poses: (F, 4, 4) camera-to-world.
        depths_mm: F depth maps (H, W) uint16 millimetres (0 = no reading).
        intrinsics: (fx, fy, cx, cy).
        tol_m, tol_rel: depth agreement tolerance: tol_m + tol_rel · z.
    """
    fx, fy, cx, cy = intrinsics
    seen = np.zeros(len(vertices), bool)
    for pose, depth in zip(poses, depths_mm):
        w2c = np.linalg.inv(pose)
        cam = vertices @ w2c[:3, :3].T + w2c[:3, 3]
        z = cam[:, 2]
        front = z > 0.05
        u = np.round(fx * cam[:, 0] / np.where(front, z, 1) + cx).astype(np.int64)
        v = np.round(fy * cam[:, 1] / np.where(front, z, 1) + cy).astype(np.int64)
        h, w = depth.shape
        inside = front & (u >= 0) & (u < w) & (v >= 0) & (v < h)
        d = np.zeros(len(z))
        d[inside] = depth[v[inside], u[inside]] / 1000.0
        seen |= inside & (d > 0) & (np.abs(d - z) < tol_m + tol_rel * z)
    return seen


def crop_to_observed(am: AnnotatedMesh, keep: np.ndarray) -> AnnotatedMesh:
    """The sub-mesh of kept vertices: faces with all three kept, segments and groups that still have vertices."""
    new_index = np.full(len(keep), -1, np.int64)
    new_index[keep] = np.arange(int(keep.sum()))
    faces = new_index[am.mesh.faces]
    faces = faces[(faces >= 0).all(1)].astype(np.int32)
    # a segment id is the index of one of its vertices (ScanNet's convention): re-point each surviving
    # segment at its first kept vertex in the new numbering
    old = am.segments[keep]
    ids, first = np.unique(old, return_index=True)
    rename = dict(zip(ids.tolist(), first.tolist()))
    segments = np.asarray([rename[s] for s in ids.tolist()], np.int64)[np.searchsorted(ids, old)]
    groups = [(oid, label, sorted(rename[s] for s in segs if s in rename)) for oid, label, segs in am.groups]
    # ScanNet's objectIds are 0..n-1 without gaps: renumber the objects that remain, in order
    groups = [(i, label, segs) for i, (_, label, segs) in enumerate(g for g in groups if g[2])]
    mesh = Mesh(am.mesh.vertices[keep], am.mesh.colors[keep], faces)
    return AnnotatedMesh(mesh, segments, groups)
