"""Offline CLIP conv1 features for exactly the frames the loaders use (seed plan §7.1-7.2, §7.8).

The frame list is the union of the dataset's manifests (SV: `img_path`, one per row; MV: `img_paths`,
already the every-40th subsample that create_data kept), so features and loaders correspond one to one.
Each frame gets `clip_feat/<scene>/color/<N>.safetensors` under the dataset root (the raw root may be
read-only), written atomically through `oseg3d.storage`; files already there are skipped, so a rerun
after a kill only computes what is missing (a killed write leaves a hidden temp file, never a final name).

Throughput: JPEG decoding (PIL releases the GIL) and the writes run in thread pools while conv1 runs on
batches; with several devices each gets a process and a deterministic slice `frames[i::n]`.
One frame's features are 1.84 MB (pix fp16 192×60×80 + global fp16 768).
"""
from __future__ import annotations

import logging
import multiprocessing
import time
from collections import Counter, deque
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor

import numpy as np
import torch
from tqdm import tqdm

from oseg3d import storage
from oseg3d.clip.conv1 import ClipConv1, pix_and_global
from oseg3d.clip.features import encode_feature, read_image
from oseg3d.data import processed
from oseg3d.errors import ConfigError, DataError

__all__ = ["REPORT_KEY", "list_frames", "compute_features", "precompute_clip", "pack_manifests", "weights_id",
           "run_part"]

log = logging.getLogger(__name__)

REPORT_KEY = "clip_feat/report.json"
_MAX_PROBLEMS = 100  # listed by name in the report; all are counted


def list_frames(dataset: str) -> list[str]:
    """Image paths (relative to the raw root) of every frame in the dataset's manifests, sorted, unique."""
    keys = processed.manifest_keys(dataset)
    if not keys:
        raise DataError(dataset, "no manifest_*.parquet in the dataset", "run create_data for it first")
    paths: set[str] = set()
    for key in keys:
        for row in processed.read_manifest(storage.join(dataset, key)).to_pylist():
            paths.update(row["img_paths"] if "img_paths" in row else [row["img_path"]])
    return sorted(paths)


def weights_id(source: str) -> str:
    """What identifies the conv1 weights in a source string: the checkpoint's sha256 prefix (or random-init)."""
    return source.rsplit("sha256 ", 1)[1].rstrip(")") if "sha256 " in source else source


@torch.no_grad()
def compute_features(conv1: ClipConv1, images: np.ndarray, device: str | torch.device) -> tuple[np.ndarray, np.ndarray]:
    """conv1 → (pix, global) in fp16 for a batch of (B, 480, 640, 3) uint8 RGB images.

    Returns:
        ``pix`` float16 (B, 192, 60, 80) and ``global`` float16 (B, 768), as numpy arrays.
    """
    x = torch.from_numpy(images)
    if torch.device(device).type == "cuda":  # ship uint8 (a quarter of float32), permute on the device
        x = x.pin_memory().to(device, non_blocking=True)
    pix, glob = pix_and_global(conv1(x.permute(0, 3, 1, 2)))
    return pix.half().cpu().numpy(), glob.half().cpu().numpy()


def _decode(raw: str, img_path: str) -> tuple[np.ndarray | None, str]:
    """(image, "") or (None, reason). Missing or unreadable images are counted skips, not errors: the
    manifest only lists frames whose image create_data could read, so this means the raw root changed
    under the dataset; one such frame must not stop a 100k-frame job, and the report names it. (Its
    loader fallback will fail too, with a DataError naming the file.)"""
    try:
        img = read_image(raw, img_path)
    except DataError:
        return None, "unreadable_image"
    return (img, "") if img is not None else (None, "missing_image")


def _prefetched(raw: str, batches: list[list[str]], pool: ThreadPoolExecutor, ahead: int = 2):
    """Yield (paths, [(image | None, reason)]) per batch while the next `ahead` batches decode in `pool`."""
    queue: deque[tuple[list[str], list[Future]]] = deque()
    todo = iter(batches)

    def fill() -> None:
        while len(queue) <= ahead and (b := next(todo, None)) is not None:
            queue.append((b, [pool.submit(_decode, raw, p) for p in b]))

    fill()
    while queue:
        paths, futs = queue.popleft()
        fill()
        yield paths, [f.result() for f in futs]


def run_part(dataset: str, raw: str, weight: np.ndarray, device: str, frames: list[str], workers: int,
              batch_size: int, position: int, wid: str, progress: bool) -> tuple[Counter, list[str]]:
    """Compute and write the features of `frames` on one device; returns (counts, problem lines)."""
    conv1 = ClipConv1().eval()
    conv1.conv1.weight.data.copy_(torch.from_numpy(weight))
    conv1.to(device)
    counts, problems, writes = Counter(), [], deque()
    batches = [frames[i:i + batch_size] for i in range(0, len(frames), batch_size)]
    bar = tqdm(total=len(frames), desc=f"clip conv1 [{device}]", unit="frame", position=position,
               disable=not progress, smoothing=0.1)
    with ThreadPoolExecutor(max(1, workers)) as decode_pool, ThreadPoolExecutor(max(2, workers)) as write_pool:
        for paths, decoded in _prefetched(raw, batches, decode_pool):
            for p, (img, why) in zip(paths, decoded):
                if img is None:
                    counts[why] += 1
                    problems.append(f"{why}: {storage.join(raw, p)}")
            ok = [(p, img) for p, (img, _) in zip(paths, decoded) if img is not None]
            if ok:
                pix, glob = compute_features(conv1, np.stack([img for _, img in ok]), device)
                for (p, _), px, gl in zip(ok, pix, glob):
                    data = encode_feature(px, gl, {"clip": wid, "image": p})
                    uri = storage.join(dataset, processed.clip_feat_key(p))
                    writes.append(write_pool.submit(storage.write_bytes, uri, data))
                counts["computed"] += len(ok)
            while len(writes) > 4 * batch_size:  # bound the encoded features held in memory
                writes.popleft().result()
            bar.update(len(paths))
        for f in writes:
            f.result()
    bar.close()
    return counts, problems


def _existing(dataset: str) -> set[str]:
    """Feature keys already written (hidden temp files of killed writes are not listed)."""
    root = storage.join(dataset, "clip_feat")
    if not storage.is_s3(root) and not storage.exists(root):  # an S3 prefix does not "exist": just list it
        return set()
    return {"clip_feat/" + o.rel for o in storage.list_files(root) if o.rel.endswith(".safetensors")}


def _check_same_weights(dataset: str, wid: str, have: set[str]) -> None:
    """Refuse to mix features of two conv1 weights in one dataset (skip-existing would do so silently)."""
    uri = storage.join(dataset, REPORT_KEY)
    if not have or not storage.exists(uri):
        return
    before = storage.read_json(uri).get("clip_weights_id")
    if before and before != wid:
        raise ConfigError(storage.join(dataset, "clip_feat"), f"holds features of CLIP weights {before!r}, this run "
                          f"uses {wid!r}", "delete the clip_feat/ folder of the dataset to recompute them all, or "
                          "pass the weights used before")


def _run_parts(args: list[tuple]) -> tuple[Counter, list[str]]:
    """`run_part` for each device's arguments: in this process for one device, else one process each."""
    args = [a for a in args if a[4]]  # devices with frames to do
    if len(args) <= 1:
        results = [run_part(*a) for a in args]
    else:
        with ProcessPoolExecutor(len(args), mp_context=multiprocessing.get_context("spawn")) as pool:
            results = [f.result() for f in [pool.submit(run_part, *a) for a in args]]
    counts, problems = Counter(), []
    for c, p in results:
        counts.update(c)
        problems += p
    return counts, problems


def precompute_clip(dataset: str, raw: str, conv1: ClipConv1, source: str, devices: list[str] | None = None,
                    workers: int = 4, batch_size: int = 16, progress: bool = True) -> dict:
    """Write the CLIP conv1 features of every manifest frame that has none yet.

    Args:
        dataset: processed dataset root (local or s3://); features go to its `clip_feat/`.
        raw: raw ScanNet root the manifests' image paths are relative to (local or s3://).
        conv1: the extractor (see `load_clip_conv1`); its weights are copied to each device.
        source: `load_clip_conv1`'s source string, recorded in the report.
        devices: e.g. ["cuda:0", "cuda:1"]; one process each when more than one. Default: cuda if available.
        workers: image-decoding threads per device (and as many writer threads).
        batch_size: frames per conv1 call.
        progress: show a tqdm bar per device.

    Returns:
        The summary, also written to `clip_feat/report.json`.

    Raises:
        ConfigError: the raw root has none of the images; the existing features came from other weights.
    """
    t0 = time.time()
    devices = devices or ["cuda" if torch.cuda.is_available() else "cpu"]
    wid = weights_id(source)
    frames = list_frames(dataset)
    have = _existing(dataset)
    _check_same_weights(dataset, wid, have)
    todo = [p for p in frames if processed.clip_feat_key(p) not in have]
    weight = conv1.conv1.weight.detach().cpu().numpy()
    parts = [todo[i::len(devices)] for i in range(len(devices))]
    args = [(dataset, raw, weight, dev, part, workers, batch_size, i, wid, progress) for i, (dev, part) in
            enumerate(zip(devices, parts))]
    t1 = time.time()
    counts, problems = _run_parts(args)
    compute_s = time.time() - t1
    missing = counts["missing_image"] + counts["unreadable_image"]
    if todo and missing == len(todo) and not have:  # (a rerun may be left with only the known-missing ones)
        raise ConfigError(raw, f"none of the {len(todo)} images to process could be read (e.g. {problems[0]})",
                          "pass --raw the ScanNet root create_data read (dataset.json raw_root)")
    report = {
        "frames_total": len(frames), "computed": counts["computed"], "skipped_existing": len(frames) - len(todo),
        "missing_images": counts["missing_image"], "unreadable_images": counts["unreadable_image"],
        "problems": sorted(problems)[:_MAX_PROBLEMS],
        "frames_per_s": round(counts["computed"] / max(compute_s, 1e-9), 2),
        "elapsed_s": round(time.time() - t0, 3), "clip_source": source, "clip_weights_id": wid, "devices": devices,
        "batch_size": batch_size, "workers": workers,
    }
    if missing:
        log.warning("%d frames have no readable image (listed in %s)", missing, REPORT_KEY)
    storage.write_json(storage.join(dataset, REPORT_KEY), report)
    return report


def pack_manifests(dataset: str) -> dict[str, int]:
    """Rewrite every manifest as schema v2 with `clip_feat_path` (SV) / `clip_feat_paths` (MV) filled in.

    Paths are relative to the dataset root and written whether or not the file exists (a missing one is
    the loader's fallback case, seed plan §7.8). Idempotent; each manifest is replaced atomically.

    Returns:
        Rows rewritten per manifest key.
    """
    out = {}
    for key in processed.manifest_keys(dataset):
        uri = storage.join(dataset, key)
        table = processed.read_manifest(uri)
        meta = table.schema.metadata
        rows = table.to_pylist()
        mode = "mv" if "img_paths" in table.column_names else "sv"
        for r in rows:
            if mode == "mv":
                r["clip_feat_paths"] = [processed.clip_feat_key(p) for p in r["img_paths"]]
            else:
                r["clip_feat_path"] = processed.clip_feat_key(r["img_path"])
        processed.write_manifest(uri, rows, mode, meta[b"oseg3d.kind"].decode(), meta[b"oseg3d.split"].decode(),
                                 version=processed.PACKED_SCHEMA_VERSION)
        out[key] = len(rows)
    return out
