"""precompute_clip step: a processed dataset + a CLIP ViT-B/16 checkpoint → per-frame conv1 features.

Adds `clip_feat/` (and, with `pack`, manifests v2 naming the feature files) to the dataset in place;
reruns skip the frames already done.
"""
from __future__ import annotations

from oseg3d.clip.conv1 import load_clip_conv1
from oseg3d.clip.features import default_raw_root
from oseg3d.clip.precompute import pack_manifests, precompute_clip
from oseg3d.errors import ConfigError

__all__ = ["run", "resolve_raw_root"]


def resolve_raw_root(dataset: str, raw: str = "") -> str:
    """The raw root the dataset's image paths are relative to.

    Order: `raw` if given; the `raw_root` create_data recorded in dataset.json if it exists here; the
    synthetic world `<dataset>/_raw` (steps.create_data's default); else a ConfigError.
    """
    found = raw or default_raw_root(dataset)
    if not found:
        raise ConfigError(dataset, "no raw ScanNet root given, and neither dataset.json's raw_root nor a _raw/ "
                          "world exists here", "pass --raw <the root create_data read>")
    return found


def run(dataset: str, raw: str = "", weights: str = "", random_init: bool = False, workers: int = 4,
        devices: str = "", batch_size: int = 16, pack: bool = False, progress: bool = True) -> dict:
    """Compute the missing CLIP conv1 features of `dataset`.

    Args:
        dataset: processed dataset root (local or s3://).
        raw: raw ScanNet root; default see `resolve_raw_root`.
        weights: open_clip ViT-B/16 checkpoint (path or s3://); see `load_clip_conv1`.
        random_init: allow a random conv1 when no weights are given (smoke runs).
        workers: decode threads per device.
        devices: comma-separated, e.g. "cuda:0,cuda:1"; default cuda if available, else cpu.
        batch_size: frames per conv1 call.
        pack: also rewrite the manifests as v2 with the feature paths.
        progress: show progress bars.

    Returns:
        The summary written to `clip_feat/report.json` (plus `packed`: rows per manifest, if `pack`).
    """
    raw_root = resolve_raw_root(dataset, raw)
    conv1, source = load_clip_conv1(weights or None, allow_random_init=random_init)
    device_list = [d.strip() for d in devices.split(",") if d.strip()] or None
    report = precompute_clip(dataset, raw_root, conv1, source, device_list, workers=workers,
                             batch_size=batch_size, progress=progress)
    if pack:
        report["packed"] = pack_manifests(dataset)
    return report
