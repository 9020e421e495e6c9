"""`oseg3d bench clip`: precompute_clip throughput — frames/s with JPEG decode, conv1 and the fp16
safetensors writes, and the rate of each stage alone (which one bounds the pipeline).

The loaders' frame lists are short on a small world (SV: every 200th raw frame, MV: every 40th), so this
bench uses the MV dataset over every raw frame (`dense_dataset`, shared with `bench train`):
- "product": the step as users run it (`precompute_clip.run`, features deleted first): listing, model
  load and CUDA start-up included;
- "steady": the decode → conv1 → write pipeline (`run_part`) over the frame list repeated to at least
  `min_frames` frames (features overwritten in place), after a warm-up batch;
- "decode", "conv1", "write": each stage alone at the same thread counts and batch size.
"""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from oseg3d import storage
from oseg3d.bench.common import dense_dataset, device, device_name, md_table, sync, write_result

__all__ = ["bench_clip"]


def _rate(n: int, seconds: float) -> dict:
    return {"frames": n, "s": seconds, "frames_per_s": n / seconds}


def bench_clip(work: Path, out_json: str, scenes: int = 3, frames: int = 81, workers: int = 8, points: int = 20000,
               batch_size: int = 64, min_frames: int = 2000) -> dict:
    from oseg3d.clip.conv1 import ClipConv1
    from oseg3d.clip.features import encode_feature, read_image
    from oseg3d.clip.precompute import compute_features, list_frames, run_part
    from oseg3d.data import processed
    from oseg3d.steps import precompute_clip
    from oseg3d.steps.precompute_clip import resolve_raw_root

    dev = device()
    root = dense_dataset(work, "scannet200_mv", scenes, frames, workers, points)
    res: dict = {"device": device_name(dev), "workers": workers, "batch_size": batch_size, "runs": {}}
    for p in Path(root, "clip_feat").rglob("*.safetensors"):
        p.unlink()
    t0 = time.perf_counter()
    rep = precompute_clip.run(root, random_init=True, workers=workers, batch_size=batch_size, progress=False)
    res["runs"]["product"] = _rate(rep.get("computed", 0), time.perf_counter() - t0)

    raw = resolve_raw_root(root, "")
    names = list_frames(root)
    todo = names * -(-min_frames // len(names))
    conv1 = ClipConv1().eval()
    weight = conv1.conv1.weight.detach().cpu().numpy()
    run_part(root, raw, weight, str(dev), todo[:batch_size], workers, batch_size, 0, "bench", False)  # warm-up
    t0 = time.perf_counter()
    run_part(root, raw, weight, str(dev), todo, workers, batch_size, 0, "bench", False)
    res["runs"]["steady"] = _rate(len(todo), time.perf_counter() - t0)

    with ThreadPoolExecutor(workers) as pool:
        t0 = time.perf_counter()
        images = list(pool.map(lambda p: read_image(raw, p), todo))
        res["runs"]["decode"] = _rate(len(todo), time.perf_counter() - t0)
    conv1.to(dev)
    batch = np.stack(images[:batch_size])
    compute_features(conv1, batch, dev)
    sync(dev)
    t0 = time.perf_counter()
    feats = [compute_features(conv1, batch, dev) for _ in range(len(todo) // batch_size)]
    res["runs"]["conv1"] = _rate(len(feats) * batch_size, time.perf_counter() - t0)
    pix, glob = feats[0]
    with ThreadPoolExecutor(max(2, workers)) as pool:
        t0 = time.perf_counter()
        list(pool.map(lambda ip: storage.write_bytes(storage.join(root, processed.clip_feat_key(ip[1])), encode_feature(
            pix[ip[0] % batch_size], glob[ip[0] % batch_size], {"clip": "bench", "image": ip[1]})), enumerate(todo)))
        res["runs"]["write"] = _rate(len(todo), time.perf_counter() - t0)
    del images, feats
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    rows = [[k, v["frames"], v["s"], v["frames_per_s"], 1000] for k, v in res["runs"].items()]
    table = (f"precompute_clip, {res['device']}, {workers} decode/write threads, batch {batch_size}, every raw frame "
             f"of a {scenes}×{frames}-frame world, repeated to ≥ {min_frames} frames (random conv1 weights)\n\n"
             + md_table(["pass", "frames", "s", "frames/s", "target"], rows))
    return write_result(out_json, res, table)
