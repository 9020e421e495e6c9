"""PyTorch datasets over a processed dataset (create_data output on local disk).

SV: one item per frame (read by safetensors slicing, so a frame costs one 560 KB read). MV: one item per
scene, a clip of `num_frames` consecutive kept frames from a random start, wrapping around the scene
(ESAM's LoadAdjacentDataFromFile); `num_frames=-1` gives the whole scene in order (evaluation).
Items are dicts of numpy arrays: coord, color (0..255), instance, semantic (mapped: 0..N-1, N = ignore),
superpoint, pose; `transform` (a callable over such a dict, with its own Generator) runs last.

With `clip_features=True` every frame also carries its CLIP conv1 features (seed plan §7.3):
`clip_pix` fp16 (192, 60, 80), `clip_global` fp16 (768,), `clip_valid` True, read from the file named by
the v2 manifest (else derived from the image path); when the file is missing, `image` uint8
(3, 480, 640) from the raw root and `clip_valid` False instead, and the model runs conv1 online. Such
fallbacks are counted in `clip_fallbacks` (per process: DataLoader workers count their own, so the
trainer sums `~clip_valid` of the batches instead).
"""
from __future__ import annotations

import os
from typing import Callable

import numpy as np
from torch.utils.data import Dataset

from oseg3d.clip.features import ClipFeatureReader
from oseg3d.data import processed
from oseg3d.errors import DataError
from oseg3d.scannet.labels import class_mapping

__all__ = ["SVFrameDataset", "MVClipDataset", "COLOR_MEAN", "COLOR_STD", "normalize_color"]

COLOR_MEAN = np.array([0.47793, 0.43033, 0.37496], np.float32) * 255
COLOR_STD = np.array([0.28345, 0.27566, 0.27019], np.float32) * 255


def normalize_color(rgb: np.ndarray) -> np.ndarray:
    """ESAM's NormalizePointsColor_: (rgb − mean) / std with ScanNet statistics."""
    return (rgb - COLOR_MEAN) / COLOR_STD


class _ClipOption:
    """`clip_features` / `clip_fallbacks` of both datasets, over an optional ClipFeatureReader `self.clip`."""

    clip: ClipFeatureReader | None = None

    @property
    def clip_features(self) -> bool:
        return self.clip is not None

    @property
    def clip_fallbacks(self) -> int:
        """Frames of this process that had no feature file (their items carry `image` instead)."""
        return self.clip.fallbacks if self.clip is not None else 0


def _manifest_rows(root: str, split: str, benchmark: str, mode: str) -> list[dict]:
    """The manifest's rows, after checking it was made for this benchmark and mode.

    An SV config on an MV dataset would fail deep inside with a KeyError, and a ScanNet config on a
    ScanNet200 dataset (or the reverse) would train on silently wrong labels: both are DataErrors here.
    An empty training split is one too (training would "succeed" with zero steps).
    """
    uri = os.path.join(root, processed.manifest_key(split))
    table = processed.read_manifest(uri)
    kind = (table.schema.metadata or {}).get(b"oseg3d.kind", b"").decode()
    want = f"{benchmark}_{mode}"
    if kind and kind != want:
        raise DataError(uri, f"is a {kind} manifest, but the config reads {want} (data.benchmark={benchmark}, "
                        f"data.mode={mode})", f"point data.root at a {want} dataset (create_data {want}), or use a "
                        f"config made for {kind}")
    rows = table.to_pylist()
    if split == "train" and not rows:
        raise DataError(uri, "the training split has no rows (create_data kept no frame of any train scene)",
                        "see the dataset's report.md, repair the raw data it names and rerun create_data")
    return rows


def _frame_item(arrays: dict, row: int, lut: np.ndarray) -> dict:
    pts = np.asarray(arrays["points"][row], np.float32)
    return {
        "coord": pts[:, :3].copy(), "color": pts[:, 3:].copy(),
        "instance": np.asarray(arrays["instance"][row], np.int64),
        "semantic": lut[np.clip(np.asarray(arrays["semantic"][row], np.int64), 0, len(lut) - 1)],
        "superpoint": np.asarray(arrays["superpoint"][row], np.int64),
        "pose": np.asarray(arrays["pose"][row], np.float32) if "pose" in arrays else np.eye(4, dtype=np.float32),
    }


class SVFrameDataset(_ClipOption, Dataset):
    """Single-view frames of one split (with `clip_features`, their CLIP features; see the module doc)."""

    def __init__(self, root: str, split: str, benchmark: str, transform: Callable | None = None,
                 clip_features: bool = False, raw_root: str = ""):
        self.root, self.transform = root, transform
        self.rows = _manifest_rows(root, split, benchmark, "sv")
        self.lut = class_mapping(benchmark)
        self.clip = ClipFeatureReader(root, raw_root) if clip_features else None

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        r = self.rows[i]
        arrays = processed.read_frame_slice(os.path.join(self.root, r["data_path"]), r["row"],
                                            ("points", "instance", "semantic", "superpoint", "pose"))
        item = {k: v[None] for k, v in arrays.items()}
        out = _frame_item(item, 0, self.lut)
        out["pose"] = np.asarray(r["pose_centered"], np.float32).reshape(4, 4)
        out["sample_id"] = r["sample_id"]
        if self.clip is not None:
            out.update(self.clip(r["img_path"], r.get("clip_feat_path")))
        return self.transform(out) if self.transform else out


class MVClipDataset(_ClipOption, Dataset):
    """Multi-view clips (or whole scenes) of one split (with `clip_features`, per-frame CLIP features)."""

    def __init__(self, root: str, split: str, benchmark: str, num_frames: int = 8,
                 transform: Callable | None = None, seed: int = 0, clip_features: bool = False, raw_root: str = ""):
        self.root, self.num_frames, self.transform = root, num_frames, transform
        self.rows = _manifest_rows(root, split, benchmark, "mv")
        self.lut = class_mapping(benchmark)
        self.clip = ClipFeatureReader(root, raw_root) if clip_features else None
        self.seed = seed
        self._rng, self._rng_key = None, None

    def _generator(self) -> np.random.Generator:
        """Clip starts drawn per process: forked DataLoader workers must not replay the parent's stream."""
        import torch

        key = (os.getpid(), torch.initial_seed())
        if self._rng is None or key != self._rng_key:
            self._rng, self._rng_key = np.random.default_rng([self.seed, key[1]]), key
        return self._rng

    def __len__(self) -> int:
        return len(self.rows)

    def frame_rows(self, i: int) -> list[int]:
        """Which kept frames item i uses: T consecutive from a random start, wrapping (all, at -1)."""
        n = self.rows[i]["num_frames"]
        if self.num_frames < 0:
            return list(range(n))
        start = int(self._generator().integers(n))
        return [(start + k) % n for k in range(self.num_frames)]

    def __getitem__(self, i: int) -> list[dict]:
        r = self.rows[i]
        arrays = processed.read_arrays(os.path.join(self.root, r["data_path"]))
        ks = self.frame_rows(i)
        frames = [_frame_item(arrays, k, self.lut) for k in ks]
        clip_paths = r.get("clip_feat_paths") or [None] * len(r["img_paths"])
        for k, f in zip(ks, frames):
            f["sample_id"] = r["scene_id"]
            if self.clip is not None:
                f.update(self.clip(r["img_paths"][k], clip_paths[k]))
        return self.transform(frames) if self.transform else frames
