"""Tiny camera-consistent frames for model tests: points back-projected from a made-up depth image.

Every frame is what create_data would give for a camera seeing a wavy wall with a few boxes: pixels
(u, v) sampled at random, depth from a smooth function, points = pose · camera points (ScanNet's
640×480 depth intrinsics), superpoints = 80-px pixel cells, instances = 160-px cells (so every
superpoint lies in one instance), and CLIP inputs (`image`, or precomputed-style `clip_pix`/`clip_global`).
"""
from __future__ import annotations

import math

import numpy as np
import torch

from oseg3d.data.collate import collate_frames
from oseg3d.scannet.frames import DEPTH_INTRINSICS

__all__ = ["random_pose", "make_frame", "make_batch"]


def random_pose(rng: np.random.Generator) -> np.ndarray:
    """A camera-to-world rigid transform: yaw about z, pitched down, a few metres from the origin."""
    yaw, pitch = rng.uniform(-math.pi, math.pi), rng.uniform(-2.2, -1.8)
    cz, sz, cx, sx = math.cos(yaw), math.sin(yaw), math.cos(pitch), math.sin(pitch)
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    pose = np.eye(4)
    pose[:3, :3] = rz @ rx
    pose[:3, 3] = rng.uniform(-3, 3, 3) + [0, 0, 1.5]
    return pose


def make_frame(rng: np.random.Generator, n: int = 1500, num_sem: int = 20, pose: np.ndarray | None = None) -> dict:
    """One frame dict in the datasets' format (coord, color, instance, semantic, superpoint, pose, image)."""
    fx, fy, cx, cy = DEPTH_INTRINSICS
    u, v = rng.uniform(-0.5, 639.5, n), rng.uniform(-0.5, 479.5, n)
    z = 2.0 + 0.3 * np.sin(u / 90) + 0.2 * np.cos(v / 70) - 0.6 * ((u // 160 + v // 160) % 2)
    cam = np.stack([(u - cx) * z / fx, (v - cy) * z / fy, z], 1)
    pose = random_pose(rng) if pose is None else pose
    coord = cam @ pose[:3, :3].T + pose[:3, 3]
    cell = (v // 80).astype(np.int64) * 8 + (u // 80).astype(np.int64)
    inst_cell = (v // 160).astype(np.int64) * 4 + (u // 160).astype(np.int64)
    sem_of_cell = rng.integers(0, num_sem, 12)
    image = rng.integers(0, 256, (3, 480, 640), dtype=np.uint8)
    color = image[:, v.round().astype(int).clip(0, 479), u.round().astype(int).clip(0, 639)].T
    return {
        "coord": coord.astype(np.float32), "color": color.astype(np.float32),
        "instance": inst_cell + 1, "semantic": sem_of_cell[inst_cell],
        "superpoint": np.unique(cell, return_inverse=True)[1], "pose": pose.astype(np.float32), "image": image,
    }


def make_batch(frames: list[dict], clip_valid: list[bool] | None = None, clip=None) -> dict:
    """Collate frames and attach the collate contract's CLIP fields.

    clip_valid: which frames carry precomputed features (computed here with `clip`, rounded to fp16 as the
    precompute stores them); None: no CLIP fields at all. `image` is present only when a frame lacks them.
    """
    from oseg3d.clip.conv1 import pix_and_global

    out = collate_frames(frames)
    if clip_valid is None:
        return out
    images = torch.from_numpy(np.stack([f["image"] for f in frames]))
    valid = torch.tensor(clip_valid)
    with torch.no_grad():
        pix, glob = pix_and_global(clip(images))
    out["clip_pix"] = (pix * valid[:, None, None, None]).half()
    out["clip_global"] = (glob * valid[:, None]).half()
    out["clip_valid"] = valid
    if not valid.all():
        out["image"] = images * (~valid)[:, None, None, None]
    return out
