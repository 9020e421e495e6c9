"""Collate dataset items into the model's batch dict (PointBatch fields, torch tensors).

SV: a list of frames → one dict. MV: a list of clips (each T frames) → T dicts, the t-th holding the
t-th frame of every clip, which is the order the online model consumes them in.
"""
from __future__ import annotations

import numpy as np
import torch

from oseg3d.data.datasets import normalize_color

__all__ = ["collate_frames", "collate_clips"]


def collate_frames(frames: list[dict]) -> dict:
    """Concatenate frames; `offset` holds cumulative point counts (Pointcept-style)."""
    cat = lambda k, dt: torch.from_numpy(np.concatenate([f[k] for f in frames]).astype(dt))  # noqa: E731
    out = {
        "coord": cat("coord", np.float32),
        "feat": torch.from_numpy(normalize_color(np.concatenate([f["color"] for f in frames])).astype(np.float32)),
        "offset": torch.from_numpy(np.cumsum([len(f["coord"]) for f in frames])).long(),
        "superpoint": cat("superpoint", np.int64),
        "instance": cat("instance", np.int64),
        "semantic": cat("semantic", np.int64),
        "pose": torch.from_numpy(np.stack([f["pose"] for f in frames]).astype(np.float32)),
        "sample_id": [f.get("sample_id") for f in frames],
    }
    if all("voxel_coord" in f for f in frames):
        out["voxel_coord"] = cat("voxel_coord", np.float32)
    return out


def collate_clips(clips: list[list[dict]]) -> list[dict]:
    """B clips of T frames → T batches of B frames."""
    t = len(clips[0])
    if any(len(c) != t for c in clips):
        raise ValueError("all clips of a batch need the same number of frames")
    return [collate_frames([c[i] for c in clips]) for i in range(t)]
