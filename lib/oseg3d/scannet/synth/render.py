"""Ray-cast RGB-D frames of a room from a camera trajectory, with a depth sensor's noise and holes.

Rays leave the camera through every pixel with the fixed ScanNet depth intrinsics; the nearest hit
among the room's inner faces and all furniture boxes wins (so furniture occludes). Boxes are tested
only over the image rectangle their projected corners cover, which keeps a 640×480 frame near 0.1 s.
Depth is the camera-frame z (what a depth sensor stores), not the ray length.
"""
from __future__ import annotations

import numpy as np

from oseg3d.scannet.synth.room import Room
from oseg3d.scannet.synth.texture import surface_color

__all__ = ["camera_trajectory", "render_frame", "IMAGE_SIZE"]

IMAGE_SIZE = (640, 480)  # width, height of ScanNet's exported frames


def _look(position: np.ndarray, forward: np.ndarray) -> np.ndarray:
    f = forward / np.linalg.norm(forward)
    right = np.cross(f, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    down = np.cross(f, right)
    pose = np.eye(4)
    pose[:3, :3] = np.stack([right, down, f], 1)  # OpenCV camera: x right, y down, z forward
    pose[:3, 3] = position
    return pose


def camera_trajectory(room: Room, num_frames: int, rng: np.random.Generator) -> np.ndarray:
    """(num_frames, 4, 4) camera-to-world poses (aligned coordinates): an ellipse around the room centre,
    looking outwards at the furniture with a swaying yaw and a downward pitch."""
    phase, loops = rng.uniform(0, 2 * np.pi), rng.uniform(0.8, 1.2)
    s = phase + np.linspace(0, 2 * np.pi * loops, num_frames, endpoint=False)
    cx, cy = room.path_center
    ax, ay = room.path_axes
    poses = []
    for k, si in enumerate(s):
        pos = np.array([cx + ax * np.cos(si), cy + ay * np.sin(si), 1.45 + 0.1 * np.sin(3 * si)])
        yaw = si + 0.9 * np.sin(2 * si + phase)  # outward, swaying
        pitch = -0.35 + 0.12 * np.sin(5 * si)
        fwd = np.array([np.cos(pitch) * np.cos(yaw), np.cos(pitch) * np.sin(yaw), np.sin(pitch)])
        poses.append(_look(pos, fwd))
    return np.stack(poses)


def _pixel_rays(intrinsics) -> np.ndarray:
    fx, fy, cx, cy = intrinsics
    w, h = IMAGE_SIZE
    u, v = np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64))
    return np.stack([(u - cx) / fx, (v - cy) / fy, np.ones_like(u)], -1)  # z = 1: t is depth


def _room_hit(o: np.ndarray, d: np.ndarray, size: np.ndarray):
    """Exit distance and face index (0..5, Room.surfaces order) of rays from inside the room box."""
    with np.errstate(divide="ignore", invalid="ignore"):
        t_hi = np.where(d > 0, (size - o) / d, np.where(d < 0, -o / d, np.inf))
    axis = np.argmin(t_hi, -1)
    t = np.take_along_axis(t_hi, axis[..., None], -1)[..., 0]
    positive = np.take_along_axis(d, axis[..., None], -1)[..., 0] > 0
    face = axis * 2 + positive  # x-: 0, x+: 1, y-: 2, y+: 3, z-: 4 (floor), z+: 5 (ceiling)
    return t, face


def _box_rect(box, w2c: np.ndarray, intrinsics) -> tuple[int, int, int, int] | None:
    cam = box.corners() @ w2c[:3, :3].T + w2c[:3, 3]
    w, h = IMAGE_SIZE
    if (cam[:, 2] <= 0.05).all():
        return None
    if (cam[:, 2] <= 0.05).any():
        return 0, w, 0, h
    fx, fy, cx, cy = intrinsics
    u, v = fx * cam[:, 0] / cam[:, 2] + cx, fy * cam[:, 1] / cam[:, 2] + cy
    u0, u1 = max(0, int(np.floor(u.min()))), min(w, int(np.ceil(u.max())) + 1)
    v0, v1 = max(0, int(np.floor(v.min()))), min(h, int(np.ceil(v.max())) + 1)
    return (u0, u1, v0, v1) if u0 < u1 and v0 < v1 else None


def render_frame(room: Room, pose: np.ndarray, intrinsics, rng: np.random.Generator):
    """Render one frame.

    Args:
        room: the scene (aligned coordinates).
        pose: (4, 4) camera-to-world (aligned).
        intrinsics: (fx, fy, cx, cy).
        rng: noise source (depth noise, dropouts, colour noise).
    Returns:
        color (H, W, 3) uint8, depth (H, W) uint16 millimetres (0 = no reading).
    """
    rays_c = _pixel_rays(intrinsics)
    d = rays_c @ pose[:3, :3].T
    o = pose[:3, 3]
    t, face = _room_hit(o, d, room.size)
    owner = face.astype(np.int64)  # index into room.all_objects
    local = np.zeros(d.shape)  # hit point in the owning part's local frame (room: world)
    part_hit = np.zeros(t.shape, bool)
    w2c = np.linalg.inv(pose)
    objects = room.all_objects
    for oi, obj in enumerate(objects):
        for box in obj.boxes:
            rect = _box_rect(box, w2c, intrinsics)
            if rect is None:
                continue
            u0, u1, v0, v1 = rect
            rot = box.rotation()
            dl = d[v0:v1, u0:u1] @ rot  # rotate into the box frame (R^T d)
            ol = (o - box.center) @ rot
            with np.errstate(divide="ignore", invalid="ignore"):
                t1, t2 = (-box.half - ol) / dl, (box.half - ol) / dl
            tn = np.nanmax(np.minimum(t1, t2), -1)
            tf = np.nanmin(np.maximum(t1, t2), -1)
            hit = (tf >= tn) & (tn > 0.01) & (tn < t[v0:v1, u0:u1])
            if hit.any():
                t[v0:v1, u0:u1][hit] = tn[hit]
                owner[v0:v1, u0:u1][hit] = oi
                local[v0:v1, u0:u1][hit] = ol + tn[hit][:, None] * dl[hit]
                part_hit[v0:v1, u0:u1][hit] = True
    world = o + t[..., None] * d
    local = np.where(part_hit[..., None], local, world)
    color = np.zeros(d.shape, np.float64)
    for oi in np.unique(owner):
        m = owner == oi
        obj = objects[oi]
        color[m] = surface_color(obj.color, obj.pattern, local[m], world[m])
    # sensor effects: photometric noise and vignetting; depth noise ∝ z², dropouts, grazing-angle holes
    h, w = t.shape
    yy, xx = np.mgrid[0:h, 0:w]
    vignette = 1 - 0.25 * (((xx - w / 2) / w) ** 2 + ((yy - h / 2) / h) ** 2)
    color = np.clip(color * vignette[..., None] + rng.normal(0, 4, color.shape), 0, 255).astype(np.uint8)
    depth = t * (1 + rng.normal(0, 0.002, t.shape) * t)
    depth[rng.random(t.shape) < 0.01] = 0
    depth_mm = np.clip(np.round(depth * 1000), 0, 65535).astype(np.uint16)
    return color, depth_mm
