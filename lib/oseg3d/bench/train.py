"""`oseg3d bench train`: SV and MV training throughput through the real trainer, on the GPU.

Each run is the product's own `fit` (Lightning, DataLoader workers, bf16 autocast, no validation) for a
few dozen steps on a real-size synthetic world, with SV and MV datasets over every raw frame
(`dense_dataset`: at ESAM's strides a small world is one batch per epoch, and the data wait measured
would be the loaders' restart at every epoch); from its metrics.csv (every step logged) after the
warm-up steps: frames/s, the share of wall time spent waiting for data, step p50. Then one batch is
replayed through forward + backward + optimizer step under torch.profiler for the GPU busy share (kernel
time / wall) and the kernel launches per step — how launch-bound the step is.
"""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import torch

from oseg3d.bench.common import dense_dataset, device, device_name, gpu_busy_share, md_table, peak_gb, reset_peak, write_result
from oseg3d.configs import load_config
from oseg3d.data.collate import collate_clips, collate_frames
from oseg3d.data.datasets import MVClipDataset, SVFrameDataset
from oseg3d.engine.trainer import fit
from oseg3d.models.batch import PointBatch
from oseg3d.models.build import build_model

__all__ = ["bench_train"]

SKIP = 5  # warm-up steps left out (cuDNN/spconv tuning, worker start)


def _steps(run: Path) -> tuple[np.ndarray, np.ndarray]:
    with open(run / "metrics.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("train/iter_time_s") and r.get("train/data_time_s")]
    it = np.array([float(r["train/iter_time_s"]) for r in rows])[SKIP:]
    data = np.array([float(r["train/data_time_s"]) for r in rows])[SKIP:]
    if len(it) == 0:
        raise ValueError(f"{run / 'metrics.csv'}: no step after the {SKIP} warm-up steps; pass --steps ≥ 2")
    return it, data


def _replay_step(cfg, dataset: str, dev, amp):
    """One fixed batch through forward + backward + AdamW step, as a callable (for the profiler)."""
    d = cfg.data
    clip = cfg.model.encoder == "bifusion"
    model = build_model(cfg.model).to(dev).train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    if d.mode == "sv":
        ds = SVFrameDataset(dataset, "train", d.benchmark, clip_features=clip)
        batch = PointBatch.from_dict(collate_frames([ds[i % len(ds)] for i in range(d.batch_size)])).to(dev)
        loss_fn = lambda: model.loss_sv(batch)  # noqa: E731
    else:
        ds = MVClipDataset(dataset, "train", d.benchmark, num_frames=d.num_frames, seed=0, clip_features=clip)
        clips = [PointBatch.from_dict(b).to(dev) for b in collate_clips([ds[i % len(ds)] for i in range(d.batch_size)])]
        loss_fn = lambda: model.loss_mv(clips)  # noqa: E731

    def step():
        with torch.autocast(dev.type, dtype=amp, enabled=amp is not None):
            total = sum(loss_fn().values())
        opt.zero_grad(set_to_none=True)
        total.backward()
        opt.step()
    return step


def bench_train(work: Path, out_json: str, routes=("3d",), scenes: int = 3, frames: int = 81, workers: int = 8, points: int = 20000,
                steps: int = 30, overrides: tuple[str, ...] = ()) -> dict:
    """Training frames/s, data wait and GPU busy share per route and mode; returns (and writes) them."""
    dev = device()
    amp = torch.bfloat16 if dev.type == "cuda" else None
    data = {m: dense_dataset(work, f"scannet200_{m}", scenes, frames, workers, points) for m in ("sv", "mv")}
    res: dict = {"device": device_name(dev), "runs": {}}
    for route in routes:
        if route == "bifusion":
            from oseg3d.steps import precompute_clip

            for root in data.values():
                precompute_clip.run(root, random_init=True, workers=workers, batch_size=64, progress=False)
        for mode, name in (("sv", f"ESAM_sv_{route}_scannet200"), ("online", f"ESAM_online_{route}_scannet200")):
            root = data["sv" if mode == "sv" else "mv"]
            sets = [f"data.root={root}", f"train.max_steps={steps + SKIP}", "train.log_every=1", "schedule.warmup_iters=5",
                    f"data.num_workers={workers}", "train.keep_checkpoints=0", *overrides]
            if route == "bifusion":
                sets.append("model.clip_random_init=true")
            cfg = load_config(name, sets)
            run = work / "runs" / name
            shutil.rmtree(run, ignore_errors=True)
            reset_peak(dev)
            fit(cfg, str(run))
            it, wait = _steps(run)
            d = cfg.data
            frames_per_step = d.batch_size * (d.num_frames if d.mode == "mv" else 1)
            r = {"frames_per_step": frames_per_step, "steps_timed": len(it),
                 "frames_per_s": frames_per_step * len(it) / float((it + wait).sum()),
                 "data_wait_share": float(wait.sum() / (it + wait).sum()), "step_ms_p50": 1e3 * float(np.median(it + wait)),
                 "peak_gb": peak_gb(dev)}
            shutil.rmtree(run, ignore_errors=True)  # checkpoints: hundreds of MB each
            res["runs"][name] = r
            _write(out_json, res, steps, workers, amp)
            # one profiled step: an MV step is ~10^5 kernels, and the profiler's bookkeeping grows with them
            r["profile"] = gpu_busy_share(_replay_step(cfg, root, dev, amp), dev, calls=1,
                                          table=Path(out_json).parent / f"profile_train_{name}.txt")
            _write(out_json, res, steps, workers, amp)
    return _write(out_json, res, steps, workers, amp, final=True)


def _write(out_json: str, res: dict, steps: int, workers: int, amp, final: bool = False) -> dict:
    """The JSON (after every run, so a cut-short bench keeps what it measured); with `final` also the table."""
    if not final:
        Path(out_json).parent.mkdir(parents=True, exist_ok=True)
        Path(out_json).write_text(json.dumps(res, indent=2, default=str))
        return res
    rows = []
    for name, r in res["runs"].items():
        p = r.get("profile", {})
        rows.append([name, r["frames_per_step"], r["frames_per_s"], 400 if "_sv_" in name else 200, r["data_wait_share"],
                     r["step_ms_p50"], p.get("gpu_busy_share", "–"), p.get("launches_per_call", "–"), r["peak_gb"]])
    table = (f"training throughput, {res['device']}, autocast {amp}, real trainer (DataLoader workers {workers}), "
             f"{steps} steps after {SKIP} warm-up\n\n"
             + md_table(["config", "frames/step", "frames/s", "target", "data wait", "step ms p50", "GPU busy",
                         "launches/step", "peak GB"], rows))
    return write_result(out_json, res, table)
