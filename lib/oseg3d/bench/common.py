"""What every benchmark shares: the device, synchronised timing, peak memory, GPU busy share, the
synthetic real-size world, and writing the result (JSON + a Markdown table)."""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

__all__ = ["device", "sync", "peak_gb", "reset_peak", "time_calls", "gpu_busy_share", "synth_world", "prepare_data",
           "dense_dataset",
           "percentiles", "write_result", "md_table"]


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def device_name(dev: torch.device) -> str:
    return torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def peak_gb(dev: torch.device) -> float:
    return torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else float("nan")


def reset_peak(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)


def time_calls(fns, dev: torch.device, warmup: int = 1) -> list[float]:
    """Seconds per call of each `fn` in `fns` (after `warmup` untimed passes over all of them)."""
    fns = list(fns)
    for _ in range(warmup):
        for fn in fns:
            fn()
    out = []
    for fn in fns:
        sync(dev)
        t0 = time.perf_counter()
        fn()
        sync(dev)
        out.append(time.perf_counter() - t0)
    return out


def percentiles(seconds: list[float]) -> dict[str, float]:
    ms = 1e3 * np.asarray(seconds)
    return {"ms_p50": float(np.percentile(ms, 50)), "ms_p90": float(np.percentile(ms, 90)), "n": len(ms)}


def gpu_busy_share(fn, dev: torch.device, calls: int = 3, table: Path | None = None) -> dict:
    """Kernel time / wall time over `calls` calls of `fn` (torch.profiler), the kernel-launch count per
    call, and optionally the profiler's top-op table written to `table`."""
    if dev.type != "cuda":
        return {}
    from torch.profiler import ProfilerActivity, profile

    fn()
    sync(dev)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        sync(dev)
        wall = time.perf_counter() - t0
    avgs = prof.key_averages()
    kernel_us = sum(getattr(e, "self_device_time_total", 0.0) for e in avgs)
    launches = sum(e.count for e in avgs if e.key in ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC"))
    if table is not None:
        table.write_text(avgs.table(sort_by="self_cpu_time_total", row_limit=30) + "\n\n"
                         + avgs.table(sort_by="self_device_time_total", row_limit=30))
    return {"gpu_busy_share": kernel_us / 1e6 / wall, "kernel_ms_per_call": kernel_us / 1e3 / calls,
            "wall_ms_per_call": 1e3 * wall / calls, "launches_per_call": launches / calls}


def synth_world(work: Path, scenes: int, frames: int, workers: int) -> Path:
    """The benches' shared synthetic raw world under `work/raw` (reused when already complete)."""
    from oseg3d.scannet.synth import SynthSpec, write_world

    raw = work / "raw"
    write_world(raw, SynthSpec(scenes=scenes, frames=frames, seed=5), workers=workers)
    return raw


def _dataset(work: Path, kind: str, scenes: int, frames: int, workers: int, points: int,
             frame_stride: int | None, name: str) -> str:
    """`work/name`: a `kind` dataset of the benches' shared world (reused when complete)."""
    from oseg3d.data.create_data import CreateDataParams, create_data

    raw, out = synth_world(work, scenes, frames, workers), work / name
    create_data(str(raw), str(out), CreateDataParams(kind=kind, num_points=points, frame_stride=frame_stride),
                workers=workers)
    return str(out)


def prepare_data(work: Path, scenes: int, frames: int, workers: int, points: int = 20000) -> tuple[str, str]:
    """A real-size synthetic world (20,000 points per frame) and its scannet200 SV / MV datasets at ESAM's
    frame strides, reused when already complete."""
    return tuple(_dataset(work, kind, scenes, frames, workers, points, None, kind)
                 for kind in ("scannet200_sv", "scannet200_mv"))


def dense_dataset(work: Path, kind: str, scenes: int, frames: int, workers: int, points: int = 20000) -> str:
    """A `kind` dataset over every raw frame (frame stride 1) of the benches' shared world, reused when
    complete. ESAM's strides (SV 200, MV 40) leave a small world one batch per epoch, so a throughput
    bench would time epoch turnovers (loader restarts) instead of steady steps."""
    return _dataset(work, kind, scenes, frames, workers, points, 1, f"dense_{kind}")


def md_table(header: list[str], rows: list[list]) -> str:
    fmt = lambda v: f"{v:.2f}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


def write_result(out_json: str | Path, result: dict, table: str) -> dict:
    """Print the table and write `result` (+ the table as `.md` beside it)."""
    out = Path(out_json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str))
    out.with_suffix(".md").write_text(table + "\n")
    print(table, flush=True)
    return result
