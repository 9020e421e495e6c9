"""Collate dataset items into the model's batch dict (PointBatch fields, torch tensors).

SV: a list of frames → one dict. MV: a list of clips (each T frames) → T dicts, the t-th holding the
t-th frame of every clip, which is the order the online model consumes them in.

CLIP features (frames from a dataset with `clip_features=True`, see datasets.py) add, for B frames:
    clip_pix     float16 (B, 192, 60, 80)  conv1 pixel features; zeros where a frame has none
    clip_global  float16 (B, 768)          conv1 mean; zeros where a frame has none
    clip_valid   bool (B,)                 the frame's features were read from its file
    image        uint8 (B, 3, 480, 640)    only when some frame lacks features (zeros for the others):
                                           the model runs conv1 online for those (the fallback)
"""
from __future__ import annotations

import numpy as np
import torch

from oseg3d.clip.features import GLOBAL_SHAPE, IMAGE_HW, PIX_SHAPE
from oseg3d.data.datasets import normalize_color

__all__ = ["collate_frames", "collate_clips", "collate_clip_fields"]


def collate_clip_fields(frames: list[dict]) -> dict:
    """The CLIP keys of a batch (see the module doc) from frames that each carry `clip_valid`."""
    b = len(frames)
    valid = torch.tensor([bool(f["clip_valid"]) for f in frames], dtype=torch.bool)
    pix = torch.zeros((b, *PIX_SHAPE), dtype=torch.float16)
    glob = torch.zeros((b, *GLOBAL_SHAPE), dtype=torch.float16)
    for i, f in enumerate(frames):
        if f["clip_valid"]:
            pix[i] = torch.from_numpy(np.asarray(f["clip_pix"], np.float16))
            glob[i] = torch.from_numpy(np.asarray(f["clip_global"], np.float16))
    out = {"clip_pix": pix, "clip_global": glob, "clip_valid": valid}
    if not valid.all():
        image = torch.zeros((b, 3, *IMAGE_HW), dtype=torch.uint8)
        for i, f in enumerate(frames):
            if not f["clip_valid"]:
                image[i] = torch.from_numpy(np.asarray(f["image"], np.uint8))
        out["image"] = image
    return out


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
    if any("clip_valid" in f for f in frames):
        if not all("clip_valid" in f for f in frames):
            raise ValueError("some frames of the batch carry CLIP fields and some do not (mixed datasets?)")
        out.update(collate_clip_fields(frames))
    return out


def collate_clips(clips: list[list[dict]]) -> list[dict]:
    """B clips of T frames → T batches of B frames."""
    t = len(clips[0])
    if any(len(c) != t for c in clips):
        raise ValueError("all clips of a batch need the same number of frames")
    return [collate_frames([c[i] for c in clips]) for i in range(t)]
