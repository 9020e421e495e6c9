"""Surface colours shared by the mesh (per vertex) and the renderer (per pixel), so both agree.

A colour is the object's base colour modulated by a pattern in the part's local coordinates (wood
grain, floor tiles, shelves, stripes, fabric) plus hashed value noise on a 2 cm world grid, which gives
texture for 2D segmentation without any randomness that would differ between mesh and images.
"""
from __future__ import annotations

import numpy as np

__all__ = ["surface_color"]


def _hash_noise(p_world: np.ndarray, cell: float = 0.02) -> np.ndarray:
    q = np.floor(p_world / cell)
    h = np.sin(q @ np.array([12.9898, 78.233, 37.719])) * 43758.5453
    return h - np.floor(h) - 0.5


def surface_color(base: np.ndarray, pattern: str, p_local: np.ndarray, p_world: np.ndarray) -> np.ndarray:
    """(N, 3) float colours in 0..255 for surface points.

    Args:
        base: (3,) base rgb.
        pattern: plain | wood | tiles | stripes | fabric | shelves.
        p_local: (N, 3) points in the part's local frame (grain and stripes follow the object).
        p_world: (N, 3) aligned world points (noise and floor tiles are fixed in the room).
    """
    x, y, z = p_local[:, 0], p_local[:, 1], p_local[:, 2]
    if pattern == "wood":
        gain = 1 + 0.12 * np.sin(2 * np.pi * (3 * (x + y) + 0.3 * np.sin(5 * z)))
    elif pattern == "tiles":
        gain = np.where((np.floor(p_world[:, 0] / 0.6) + np.floor(p_world[:, 1] / 0.6)) % 2 == 0, 1.12, 0.88)
    elif pattern == "stripes":
        gain = np.where(np.floor((x + y) / 0.08) % 2 == 0, 1.25, 0.6)
    elif pattern == "fabric":
        gain = 1 + 0.06 * np.sin(40 * x) * np.sin(40 * (y + z))
    elif pattern == "shelves":
        gain = np.where((z % 0.38) < 0.03, 0.55, 1.0)
    else:
        gain = np.ones_like(x)
    rgb = base[None, :] * gain[:, None] + 24.0 * _hash_noise(p_world)[:, None]
    return np.clip(rgb, 0, 255)
