"""Procedural rooms: walls, floor, ceiling and furniture built from oriented boxes, in aligned coordinates.

A room is the box [0, W] × [0, D] × [0, H]; its six inner faces are the four walls (one instance each),
the floor and the ceiling. Furniture is a set of objects, each a few oriented boxes (a chair = seat,
back, four legs) with one instance id and a ScanNet raw label. Floor objects keep out of the camera's
elliptic path around the room centre so every frame is rendered from free space.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["Box", "SceneObject", "Room", "generate_room", "FLOOR_TEMPLATES", "WALL_TEMPLATES"]


@dataclass
class Box:
    """An oriented box: centre (3,), half extents (3,), yaw about +z (radians)."""

    center: np.ndarray
    half: np.ndarray
    yaw: float

    def rotation(self) -> np.ndarray:
        c, s = np.cos(self.yaw), np.sin(self.yaw)
        return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]], np.float64)

    def corners(self) -> np.ndarray:
        signs = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], np.float64)
        return (signs * self.half) @ self.rotation().T + self.center


@dataclass
class SceneObject:
    """One annotated object: instance `object_id` (ScanNet objectId), raw `label`, its boxes and colour."""

    object_id: int
    label: str
    boxes: list[Box]
    color: np.ndarray
    pattern: str = "plain"


@dataclass
class Room:
    """Room size (W, D, H), its six surfaces' object ids and colours, furniture, and the camera ellipse."""

    size: np.ndarray
    surfaces: list[SceneObject]  # order: wall x-, wall x+, wall y-, wall y+, floor, ceiling
    objects: list[SceneObject] = field(default_factory=list)
    path_center: np.ndarray = field(default_factory=lambda: np.zeros(2))
    path_axes: np.ndarray = field(default_factory=lambda: np.ones(2))

    @property
    def all_objects(self) -> list[SceneObject]:
        return self.surfaces + self.objects


def _parts_table(l, w, h):  # l × w footprint, height h, origin at floor centre
    t, leg = 0.05, 0.06
    parts = [((0, 0, h - t / 2), (l / 2, w / 2, t / 2))]
    for sx in (-1, 1):
        for sy in (-1, 1):
            parts.append(((sx * (l / 2 - leg), sy * (w / 2 - leg), (h - t) / 2), (leg / 2, leg / 2, (h - t) / 2)))
    return parts


def _parts_chair(l, w, h):
    seat = 0.45
    parts = _parts_table(l, w, seat)
    parts.append(((0, -w / 2 + 0.03, seat + (h - seat) / 2), (l / 2, 0.03, (h - seat) / 2)))
    return parts


def _parts_sofa(l, w, h):
    return [((0, 0.05, 0.21), (l / 2, w / 2 - 0.05, 0.21)), ((0, -w / 2 + 0.1, h / 2), (l / 2, 0.1, h / 2)),
            ((-l / 2 + 0.08, 0.05, 0.32), (0.08, w / 2 - 0.05, 0.32)), ((l / 2 - 0.08, 0.05, 0.32), (0.08, w / 2 - 0.05, 0.32))]


def _parts_bed(l, w, h):
    return [((0, 0.04, 0.25), (l / 2, w / 2 - 0.04, 0.25)), ((0, -w / 2 + 0.04, h / 2), (l / 2, 0.04, h / 2))]


def _parts_block(l, w, h):
    return [((0, 0, h / 2), (l / 2, w / 2, h / 2))]


def _parts_toilet(l, w, h):
    return [((0, 0.05, 0.2), (l / 2, w / 2 - 0.05, 0.2)), ((0, -w / 2 + 0.1, h / 2), (l / 2, 0.1, h / 2))]


def _parts_sink(l, w, h):
    return [((0, 0, h - 0.1), (l / 2, w / 2, 0.1)), ((0, 0, (h - 0.2) / 2), (0.08, 0.08, (h - 0.2) / 2))]


def _parts_lamp(l, w, h):
    return [((0, 0, (h - 0.3) / 2), (0.03, 0.03, (h - 0.3) / 2)), ((0, 0, h - 0.15), (l / 2, w / 2, 0.15))]


# label: (parts builder, size ranges (l, w, h), base colour rgb, pattern, (min, max) instances)
FLOOR_TEMPLATES = {
    "chair": (_parts_chair, ((0.42, 0.5), (0.42, 0.5), (0.85, 1.0)), (150, 90, 50), "wood", (2, 5)),
    "table": (_parts_table, ((1.0, 1.6), (0.6, 0.9), (0.7, 0.78)), (170, 120, 70), "wood", (1, 2)),
    "desk": (_parts_table, ((1.1, 1.5), (0.55, 0.7), (0.72, 0.76)), (200, 200, 195), "plain", (1, 2)),
    "cabinet": (_parts_block, ((0.6, 1.2), (0.4, 0.5), (0.7, 1.0)), (120, 80, 50), "wood", (1, 3)),
    "bookshelf": (_parts_block, ((0.7, 1.0), (0.3, 0.4), (1.6, 2.0)), (90, 60, 40), "shelves", (1, 2)),
    "couch": (_parts_sofa, ((1.6, 2.2), (0.8, 0.95), (0.75, 0.85)), (70, 90, 140), "fabric", (1, 1)),
    "bed": (_parts_bed, ((1.4, 1.8), (1.9, 2.1), (0.9, 1.1)), (220, 215, 200), "fabric", (0, 1)),
    "refrigerator": (_parts_block, ((0.6, 0.8), (0.6, 0.75), (1.6, 1.9)), (235, 235, 240), "plain", (0, 1)),
    "toilet": (_parts_toilet, ((0.38, 0.45), (0.55, 0.7), (0.75, 0.8)), (245, 245, 245), "plain", (0, 1)),
    "sink": (_parts_sink, ((0.45, 0.6), (0.35, 0.45), (0.85, 0.9)), (230, 230, 235), "plain", (0, 2)),
    "trash can": (_parts_block, ((0.25, 0.35), (0.25, 0.35), (0.35, 0.6)), (60, 60, 60), "plain", (1, 2)),
    "lamp": (_parts_lamp, ((0.3, 0.4), (0.3, 0.4), (1.4, 1.7)), (240, 220, 160), "plain", (0, 2)),
}
# label: (width range, height range, bottom z range, colour, pattern, (min, max) instances)
WALL_TEMPLATES = {
    "door": ((0.8, 0.95), (2.0, 2.1), (0.0, 0.0), (160, 110, 70), "wood", (1, 2)),
    "window": ((0.9, 1.5), (0.9, 1.3), (0.9, 1.1), (180, 210, 235), "plain", (1, 2)),
    "picture": ((0.4, 0.9), (0.3, 0.7), (1.3, 1.6), (200, 60, 60), "stripes", (1, 3)),
    "curtain": ((1.0, 1.6), (2.0, 2.3), (0.05, 0.1), (150, 40, 60), "fabric", (0, 1)),
}


def _jitter(rng: np.random.Generator, rgb, amount=25) -> np.ndarray:
    return np.clip(np.asarray(rgb, np.float64) + rng.normal(0, amount, 3), 10, 250)


def _place_floor_objects(rng, room: Room, next_id: int) -> int:
    w, d, _ = room.size
    footprints: list[tuple[float, float, float]] = []
    cx, cy = room.path_center
    ax, ay = room.path_axes
    for label, (builder, ranges, rgb, pattern, (lo, hi)) in FLOOR_TEMPLATES.items():
        for _ in range(rng.integers(lo, hi + 1)):
            l, wd, h = (rng.uniform(a, b) for a, b in ranges)
            r = 0.5 * np.hypot(l, wd)
            for _try in range(60):
                x, y = rng.uniform(r + 0.05, w - r - 0.05), rng.uniform(r + 0.05, d - r - 0.05)
                # keep the camera ellipse (plus the object's radius and 0.35 m) free
                if ((x - cx) / (ax + r + 0.35)) ** 2 + ((y - cy) / (ay + r + 0.35)) ** 2 < 1.0:
                    continue
                if all(np.hypot(x - fx, y - fy) > r + fr + 0.05 for fx, fy, fr in footprints):
                    break
            else:
                continue
            footprints.append((x, y, r))
            yaw = float(np.arctan2(cy - y, cx - x) - np.pi / 2 + rng.normal(0, 0.3))  # face the room centre
            rot = np.array([[np.cos(yaw), -np.sin(yaw)], [np.sin(yaw), np.cos(yaw)]])
            boxes = []
            for (px, py, pz), half in builder(l, wd, h):
                off = rot @ np.array([px, py])
                boxes.append(Box(np.array([x + off[0], y + off[1], pz]), np.array(half, np.float64), yaw))
            room.objects.append(SceneObject(next_id, label, boxes, _jitter(rng, rgb), pattern))
            next_id += 1
    return next_id


def _place_wall_objects(rng, room: Room, next_id: int) -> int:
    w, d, _ = room.size
    used: dict[int, list[tuple[float, float]]] = {k: [] for k in range(4)}
    for label, (wr, hr, zr, rgb, pattern, (lo, hi)) in WALL_TEMPLATES.items():
        for _ in range(rng.integers(lo, hi + 1)):
            width, height, z0 = rng.uniform(*wr), rng.uniform(*hr), rng.uniform(*zr)
            wall = int(rng.integers(4))
            length = d if wall < 2 else w
            for _try in range(30):
                s = rng.uniform(width / 2 + 0.1, length - width / 2 - 0.1)
                if all(abs(s - u) > (width + uw) / 2 + 0.05 for u, uw in used[wall]):
                    break
            else:
                continue
            used[wall].append((s, width))
            t = 0.03  # protrudes 3 cm from the wall
            if wall < 2:
                x = t / 2 if wall == 0 else w - t / 2
                box = Box(np.array([x, s, z0 + height / 2]), np.array([t / 2, width / 2, height / 2]), 0.0)
            else:
                y = t / 2 if wall == 2 else d - t / 2
                box = Box(np.array([s, y, z0 + height / 2]), np.array([width / 2, t / 2, height / 2]), 0.0)
            room.objects.append(SceneObject(next_id, label, [box], _jitter(rng, rgb), pattern))
            next_id += 1
    return next_id


def generate_room(rng: np.random.Generator) -> Room:
    """A furnished room; object ids 0..5 are the walls, floor and ceiling, then furniture."""
    size = np.array([rng.uniform(5.0, 8.0), rng.uniform(4.5, 7.0), rng.uniform(2.5, 2.9)])
    wall_rgb = _jitter(rng, (215, 210, 200), 15)
    surfaces = [SceneObject(i, "wall", [], _jitter(rng, wall_rgb, 6), "plain") for i in range(4)]
    surfaces.append(SceneObject(4, "floor", [], _jitter(rng, (140, 110, 80), 20), "tiles"))
    surfaces.append(SceneObject(5, "ceiling", [], _jitter(rng, (235, 235, 235), 5), "plain"))
    room = Room(size, surfaces, path_center=size[:2] / 2, path_axes=size[:2] * np.array([0.18, 0.18]))
    next_id = _place_floor_objects(rng, room, 6)
    _place_wall_objects(rng, room, next_id)
    return room
