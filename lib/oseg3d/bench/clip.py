"""`oseg3d bench clip`: precompute_clip throughput — frames/s with JPEG decode, resize and the fp16
safetensors writes (features deleted before each pass, so nothing is skipped).

The loaders' frame lists are short on a small world (SV: every 200th raw frame, MV: every 40th), too short
to see past the start-up; so this bench uses the MV dataset over every raw frame (`dense_dataset`, shared
with `bench train`) and times two passes: the first includes CUDA/cuDNN start-up, the second is the steady
rate."""
from __future__ import annotations

import time
from pathlib import Path

from oseg3d.bench.common import dense_dataset, device, device_name, md_table, write_result

__all__ = ["bench_clip"]


def bench_clip(work: Path, out_json: str, scenes: int = 3, frames: int = 81, workers: int = 8, points: int = 20000,
               batch_size: int = 64) -> dict:
    from oseg3d.steps import precompute_clip

    dev = device()
    root = dense_dataset(work, "scannet200_mv", scenes, frames, workers, points)
    res: dict = {"device": device_name(dev), "workers": workers, "batch_size": batch_size, "runs": {}}
    for name in ("cold", "warm"):
        for p in Path(root, "clip_feat").rglob("*.safetensors"):
            p.unlink()
        t0 = time.perf_counter()
        rep = precompute_clip.run(root, random_init=True, workers=workers, batch_size=batch_size, progress=False)
        wall = time.perf_counter() - t0
        res["runs"][name] = {**rep, "wall_s": wall, "wall_frames_per_s": rep.get("computed", 0) / wall}
    rows = [[k, v.get("computed", 0), v["wall_s"], v["wall_frames_per_s"], 1000] for k, v in res["runs"].items()]
    table = (f"precompute_clip, {res['device']}, {workers} decode workers, batch {batch_size}, every raw frame of a "
             f"{scenes}×{frames}-frame world (random conv1 weights)\n\n"
             + md_table(["pass", "frames", "s (incl. model load)", "frames/s", "target"], rows))
    return write_result(out_json, res, table)
