"""Tessellate a room into a ScanNet-style annotated mesh: vertices, colours, faces, segments, groups.

Every surface (room face or box face) becomes a grid of triangles with spacing `resolution`; segments
are patches of about `segment_size` on one surface, so a segment never spans two objects, like
ScanNet's over-segmentation. Segment ids are a representative vertex index, as in real `segIndices`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from oseg3d.scannet.ply import Mesh
from oseg3d.scannet.synth.room import Room
from oseg3d.scannet.synth.texture import surface_color

__all__ = ["AnnotatedMesh", "tessellate"]


@dataclass
class AnnotatedMesh:
    """Mesh in aligned coordinates plus per-vertex segment id and `(objectId, label, segments)` groups."""

    mesh: Mesh
    segments: np.ndarray
    groups: list[tuple[int, str, list[int]]]


def _grid(origin, e1, e2, a: float, b: float, res: float, seg: float):
    na, nb = max(1, int(np.ceil(a / res))), max(1, int(np.ceil(b / res)))
    s, t = np.meshgrid(np.linspace(0, 1, na + 1), np.linspace(0, 1, nb + 1), indexing="ij")
    pts = origin + (s.reshape(-1, 1) * a) * e1 + (t.reshape(-1, 1) * b) * e2
    idx = np.arange((na + 1) * (nb + 1)).reshape(na + 1, nb + 1)
    q = np.stack([idx[:-1, :-1], idx[1:, :-1], idx[1:, 1:], idx[:-1, 1:]], -1).reshape(-1, 4)
    faces = np.concatenate([q[:, [0, 1, 2]], q[:, [0, 2, 3]]])
    # patch index of each vertex on this surface
    pa, pb = max(1, int(round(a / seg))), max(1, int(round(b / seg)))
    patch = np.minimum((s * pa).astype(int), pa - 1) * pb + np.minimum((t * pb).astype(int), pb - 1)
    return pts, faces, patch.reshape(-1)


def _box_faces(half: np.ndarray):
    """(origin, e1, e2, len1, len2) of the 6 faces of an axis-aligned box centred at 0 (local frame)."""
    out = []
    for k in range(3):
        i, j = [a for a in range(3) if a != k]
        for sign in (-1.0, 1.0):
            o = -half.copy()
            o[k] = sign * half[k]
            e1, e2 = np.eye(3)[i], np.eye(3)[j]
            out.append((o, e1, e2, 2 * half[i], 2 * half[j]))
    return out


def _room_faces(size: np.ndarray):
    w, d, h = size
    ex, ey, ez = np.eye(3)
    return [  # wall x-, wall x+, wall y-, wall y+, floor, ceiling (matches Room.surfaces order)
        (np.zeros(3), ey, ez, d, h), (np.array([w, 0, 0]), ey, ez, d, h),
        (np.zeros(3), ex, ez, w, h), (np.array([0, d, 0]), ex, ez, w, h),
        (np.zeros(3), ex, ey, w, d), (np.array([0, 0, h]), ex, ey, w, d),
    ]


def tessellate(room: Room, resolution: float = 0.05, segment_size: float = 0.3) -> AnnotatedMesh:
    """Build the annotated mesh of `room` (aligned coordinates)."""
    verts, cols, faces, segs = [], [], [], []
    group_segs: dict[int, list[int]] = {}
    n = 0

    def add(obj, pts_world, pts_local, f, patch):
        nonlocal n
        verts.append(pts_world)
        cols.append(surface_color(obj.color, obj.pattern, pts_local, pts_world))
        faces.append(f + n)
        # representative vertex index per patch → segment id
        _, first = np.unique(patch, return_index=True)
        rep = np.zeros(patch.max() + 1, np.int64)
        rep[patch[first]] = first + n
        segs.append(rep[patch])
        group_segs.setdefault(obj.object_id, []).extend(int(v) for v in np.unique(rep[patch]))
        n += len(pts_world)

    for obj, (o, e1, e2, a, b) in zip(room.surfaces, _room_faces(room.size)):
        pts, f, patch = _grid(o, e1, e2, a, b, resolution, segment_size * 2)
        add(obj, pts, pts, f, patch)
    for obj in room.objects:
        for box in obj.boxes:
            rot = box.rotation()
            for o, e1, e2, a, b in _box_faces(box.half):
                local, f, patch = _grid(o, e1, e2, a, b, resolution, segment_size)
                add(obj, local @ rot.T + box.center, local, f, patch)
    mesh = Mesh(np.concatenate(verts).astype(np.float32), np.concatenate(cols).round().astype(np.uint8),
                np.concatenate(faces).astype(np.int32))
    groups = [(o.object_id, o.label, sorted(set(group_segs[o.object_id]))) for o in room.all_objects]
    return AnnotatedMesh(mesh, np.concatenate(segs), groups)
