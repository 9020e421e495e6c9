"""The 2D export of a scan: colour JPEG, uint16 depth PNG (mm) and camera-to-world pose per raw frame.

Real exports have holes: NaN/inf poses (ESAM issue #3), unreadable images (ESAM issue #54), missing
files. Each problem raises `FrameSkip` with a reason code, so create_data can skip and count it instead
of crashing deep inside PIL or numpy.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

__all__ = [
    "DEPTH_INTRINSICS", "DEPTH_SCALE", "Frame", "FrameSkip", "list_frame_indices", "read_pose",
    "read_color", "read_depth", "read_frame",
]

# Dataset-average depth intrinsics ESAM hard-codes for every ScanNet scene (ESAM issue #52).
DEPTH_INTRINSICS = (577.870605, 577.870605, 319.5, 239.5)
DEPTH_SCALE = 1000.0  # uint16 mm → m

_INDEX_RE = re.compile(r"^(\d+)\.jpg$")


class FrameSkip(Exception):
    """A frame that cannot be used; `reason` is a short code counted in the create_data report."""

    def __init__(self, reason: str, path: str | Path, detail: str = ""):
        self.reason, self.path = reason, str(path)
        super().__init__(f"{path}: {reason}" + (f" ({detail})" if detail else ""))


@dataclass
class Frame:
    """One decoded RGB-D frame: color (H, W, 3) uint8, depth (H, W) float32 metres, pose (4, 4) c2w."""

    index: int
    color: np.ndarray
    depth: np.ndarray
    pose: np.ndarray


def list_frame_indices(scene_2d_dir: str | Path) -> list[int]:
    """Raw frame indices N of `color/N.jpg`, ascending (numeric, not lexicographic)."""
    color = Path(scene_2d_dir) / "color"
    if not color.is_dir():
        return []
    return sorted(int(m.group(1)) for name in os.listdir(color) if (m := _INDEX_RE.match(name)))


def read_pose(path: str | Path) -> np.ndarray:
    """A 4×4 camera-to-world pose; FrameSkip('bad_pose') if not 16 finite numbers."""
    path = Path(path)
    if not path.is_file():
        raise FrameSkip("missing_file", path)
    try:
        m = np.array(path.read_text().split(), np.float64)
    except ValueError as e:
        raise FrameSkip("bad_pose", path, str(e)) from None
    if m.size != 16 or not np.isfinite(m).all():
        raise FrameSkip("bad_pose", path, "not 16 finite numbers")
    return m.reshape(4, 4)


def _open_image(path: Path) -> Image.Image:
    if not path.is_file():
        raise FrameSkip("missing_file", path)
    try:
        img = Image.open(path)
        img.load()
        return img
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise FrameSkip("corrupt_image", path, str(e)) from None


def read_color(path: str | Path) -> np.ndarray:
    """RGB uint8 (H, W, 3)."""
    return np.asarray(_open_image(Path(path)).convert("RGB"))


def read_depth(path: str | Path) -> np.ndarray:
    """Depth in metres (H, W) float32 from a uint16 millimetre PNG."""
    img = _open_image(Path(path))
    if img.mode not in ("I;16", "I;16B", "I"):
        raise FrameSkip("corrupt_image", path, f"depth PNG has mode {img.mode}, expected 16-bit grey")
    return np.asarray(img, dtype=np.float32) / DEPTH_SCALE


def read_frame(scene_2d_dir: str | Path, index: int) -> Frame:
    """Decode colour, depth and pose of raw frame `index`, checking sizes and validity."""
    d = Path(scene_2d_dir)
    pose = read_pose(d / "pose" / f"{index}.txt")
    color = read_color(d / "color" / f"{index}.jpg")
    depth = read_depth(d / "depth" / f"{index}.png")
    if color.shape[:2] != depth.shape:
        raise FrameSkip("size_mismatch", d / "color" / f"{index}.jpg", f"colour {color.shape[:2]} vs depth {depth.shape}")
    return Frame(index, color, depth, pose)
