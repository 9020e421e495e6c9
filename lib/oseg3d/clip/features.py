"""Per-frame CLIP feature files: encoding, reading, and the loader's choice between cache and fallback.

A feature file (seed plan §7.2, DESIGN §4) is a safetensors file with ``pix`` fp16 (192, 60, 80) and
``global`` fp16 (768,) at ``processed.clip_feat_key(img_path)`` under the dataset root. When the file is
missing, the loader hands the model the decoded image instead (``clip_valid=False``) and the model runs
conv1 online: the "fallback" of §7.4, counted so that a training log shows it (§7.7: it should be 0).

Images are decoded here for both the precompute and the fallback, so that the two see the same pixels.
"""
from __future__ import annotations

import io
import json

import numpy as np
from PIL import Image, UnidentifiedImageError
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from oseg3d import storage
from oseg3d.data.processed import clip_feat_key
from oseg3d.errors import DataError

__all__ = ["IMAGE_HW", "PIX_SHAPE", "GLOBAL_SHAPE", "decode_image", "read_image", "encode_feature",
           "read_feature", "frame_clip_fields", "default_raw_root", "ClipFeatureReader"]

IMAGE_HW = (480, 640)  # the 2D export's colour size; conv1 (stride 16) then gives 30×40, pix 60×80
PIX_SHAPE = (192, IMAGE_HW[0] // 8, IMAGE_HW[1] // 8)
GLOBAL_SHAPE = (768,)


def decode_image(data: bytes, name: str) -> np.ndarray:
    """Decode JPEG/PNG bytes to RGB uint8 (480, 640, 3), resized (bilinear) if the export differs.

    Raises:
        DataError: the bytes are not a decodable image.
    """
    try:
        with Image.open(io.BytesIO(data)) as im:
            im = im.convert("RGB")
            if im.size != (IMAGE_HW[1], IMAGE_HW[0]):
                im = im.resize((IMAGE_HW[1], IMAGE_HW[0]), Image.BILINEAR)
            return np.array(im, dtype=np.uint8)  # a writable copy (torch.from_numpy warns on read-only)
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise DataError(name, f"not a decodable image ({e})", "restore the file from the ScanNet 2D export") from None


def _read_or_none(uri: str) -> bytes | None:
    """File content, or None if it does not exist (local: one open, no separate exists check)."""
    if storage.is_s3(uri):
        return storage.read_bytes(uri) if storage.exists(uri) else None
    try:
        with open(uri, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return None


def read_image(raw_root: str, img_path: str) -> np.ndarray | None:
    """The (480, 640, 3) uint8 image at ``raw_root/img_path``, or None when the file is missing."""
    uri = storage.join(raw_root, img_path)
    data = _read_or_none(uri)
    return None if data is None else decode_image(data, uri)


def encode_feature(pix: np.ndarray, glob: np.ndarray, meta: dict | None = None) -> bytes:
    """Serialise one frame's features (cast to fp16) as safetensors bytes."""
    arrays = {"pix": np.ascontiguousarray(pix, np.float16), "global": np.ascontiguousarray(glob, np.float16)}
    if arrays["pix"].shape != PIX_SHAPE or arrays["global"].shape != GLOBAL_SHAPE:
        raise ValueError(f"feature shapes {arrays['pix'].shape}, {arrays['global'].shape}; "
                         f"want {PIX_SHAPE}, {GLOBAL_SHAPE}")
    # one metadata key: safetensors keeps metadata in a hash map, several keys would make the bytes vary
    return st_save(arrays, metadata={"oseg3d": json.dumps(meta or {}, sort_keys=True)})


def read_feature(uri: str) -> dict[str, np.ndarray] | None:
    """``{"pix", "global"}`` fp16 arrays of a feature file, or None when it does not exist.

    Raises:
        DataError: the file exists but is not a feature file of the expected shapes.
    """
    data = _read_or_none(uri)
    if data is None:
        return None
    fix = "delete it and rerun `oseg3d precompute-clip` (existing files are skipped, only this one is redone)"
    try:
        arrays = st_load(data)
    except Exception as e:  # safetensors raises its own SafetensorError on a bad header
        raise DataError(uri, f"unreadable CLIP feature file ({e})", fix) from None
    pix, glob = arrays.get("pix"), arrays.get("global")
    if (pix is None or glob is None or pix.shape != PIX_SHAPE or glob.shape != GLOBAL_SHAPE
            or pix.dtype != np.float16 or glob.dtype != np.float16):
        got = {k: (v.shape, str(v.dtype)) for k, v in arrays.items()}
        raise DataError(uri, f"CLIP feature file holds {got}, want pix fp16 {PIX_SHAPE} and global fp16 "
                        f"{GLOBAL_SHAPE}", fix)
    return {"pix": pix, "global": glob}


def frame_clip_fields(root: str, raw_root: str, img_path: str, clip_path: str | None = None) -> dict:
    """The clip keys of one frame item.

    Args:
        root: dataset root (features live under it).
        raw_root: raw ScanNet root (the image, for the fallback).
        img_path: the manifest's image path, relative to ``raw_root``.
        clip_path: the manifest v2 feature path relative to ``root``; None derives it from ``img_path``.

    Returns:
        ``clip_pix`` fp16 (192, 60, 80), ``clip_global`` fp16 (768,), ``clip_valid`` True; or, when the
        feature file is missing, ``image`` uint8 (3, 480, 640) and ``clip_valid`` False.

    Raises:
        DataError: neither the feature file nor the image exists (nothing to compute conv1 from).
    """
    feat_uri = storage.join(root, clip_path or clip_feat_key(img_path))
    feat = read_feature(feat_uri)
    if feat is not None:
        return {"clip_pix": feat["pix"], "clip_global": feat["global"], "clip_valid": True}
    image = read_image(raw_root, img_path) if raw_root else None
    if image is None:
        raise DataError(feat_uri, f"CLIP features missing and no image to fall back on (raw root {raw_root!r}, "
                        f"image {img_path})", "run `oseg3d precompute-clip` for this dataset, or pass the raw "
                        "ScanNet root the dataset was made from (dataset.json raw_root)")
    return {"image": np.ascontiguousarray(image.transpose(2, 0, 1)), "clip_valid": False}



def default_raw_root(root: str) -> str:
    """Where a dataset's images are: dataset.json's `raw_root` if it exists here, else `<root>/_raw`, else ""."""
    meta = storage.join(root, "dataset.json")
    recorded = storage.read_json(meta).get("raw_root", "") if storage.exists(meta) else ""
    if recorded and storage.exists(recorded):
        return recorded
    synth = storage.join(root, "_raw")
    return synth if storage.exists(synth) else ""


class ClipFeatureReader:
    """A dataset's CLIP fields per frame (`frame_clip_fields`), counting the fallbacks in `fallbacks`.

    The count is per process: DataLoader workers hold their own copies, so a trainer sums `~clip_valid`.
    """

    def __init__(self, root: str, raw_root: str = ""):
        self.root, self.raw_root = root, raw_root or default_raw_root(root)
        self.fallbacks = 0

    def __call__(self, img_path: str, clip_path: str | None = None) -> dict:
        out = frame_clip_fields(self.root, self.raw_root, img_path, clip_path)
        self.fallbacks += not out["clip_valid"]
        return out
