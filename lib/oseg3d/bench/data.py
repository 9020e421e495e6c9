"""`oseg3d bench data`: create_data throughput in frames/s per core (graph superpoints, no SAM).

Synthesises (or reuses) a world, then times create_data for each requested kind with one worker and
OpenMP pinned to one thread, so the number is per core; `--workers` adds a parallel run for scaling.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

from oseg3d.data.create_data import CreateDataParams, create_data
from oseg3d.scannet.synth import SynthSpec, write_world

__all__ = ["bench_data"]


def bench_data(work: str, scenes: int = 4, frames: int = 81, kinds=("scannet_mv", "scannet_sv"),
               workers: int = 1) -> dict:
    """Time create_data on a synthetic world; returns {kind: {frames, seconds, frames_per_s, per_core}}."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    work_p = Path(work)
    raw = work_p / "raw"
    write_world(raw, SynthSpec(scenes=scenes, frames=frames, seed=1), workers=max(1, os.cpu_count() or 1))
    out = {}
    for kind in kinds:
        for w in sorted({1, workers}):
            dst = work_p / f"{kind}-w{w}"
            shutil.rmtree(dst, ignore_errors=True)
            t0 = time.perf_counter()
            rep = create_data(str(raw), str(dst), CreateDataParams(kind=kind), workers=w)
            dt = time.perf_counter() - t0
            n = rep["frames"]["total"]
            out[f"{kind}/workers={w}"] = {"frames": n, "seconds": round(dt, 3), "frames_per_s": round(n / dt, 2),
                                          "frames_per_s_per_core": round(n / dt / w, 2)}
    print("| run | frames | s | frames/s | frames/s/core |\n|---|---|---|---|---|")
    for k, v in out.items():
        print(f"| {k} | {v['frames']} | {v['seconds']} | {v['frames_per_s']} | {v['frames_per_s_per_core']} |")
    (work_p / "bench_data.json").write_text(json.dumps(out, indent=2))
    return out
