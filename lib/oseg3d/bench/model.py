"""`oseg3d bench model`: route ❶ at real size on the GPU — SV and MV training steps, online streaming.

Runs on processed data (create_data output; synthesised here when no `--data` is given):
- SV train step: batch of 16 frames × 20,000 points, forward + backward under autocast;
- MV train step: B clips of 8 frames through the memory, forward + backward;
- online inference: one scene streamed frame by frame (B = 1), per-component latency (backbone,
  memory, decoder, post-processing, merge) with a synchronising timer, plus the end-to-end frame time
  without it; p50 / p90 and peak memory. Prints a Markdown table and writes JSON.
"""
from __future__ import annotations

import contextlib
import json
import os
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from oseg3d.data.collate import collate_clips, collate_frames
from oseg3d.data.datasets import MVClipDataset, SVFrameDataset
from oseg3d.models.batch import PointBatch
from oseg3d.models.build import ModelConfig, build_model, count_parameters
from oseg3d.models.online import OnlineConfig, OnlineSegmenter
from oseg3d.models.sparse import half_sparse_for_inference

__all__ = ["bench_model", "prepare_data"]


def prepare_data(work: Path, scenes: int, frames: int, workers: int) -> tuple[str, str]:
    """A real-size synthetic world and its scannet200 SV / MV datasets (reused when present)."""
    from oseg3d.data.create_data import CreateDataParams, create_data
    from oseg3d.scannet.synth import SynthSpec, write_world

    raw = work / "raw"
    write_world(raw, SynthSpec(scenes=scenes, frames=frames, seed=5), workers=workers)
    out = {}
    for kind in ("scannet200_sv", "scannet200_mv"):
        out[kind] = str(work / kind)
        create_data(str(raw), out[kind], CreateDataParams(kind=kind), workers=workers)
    return out["scannet200_sv"], out["scannet200_mv"]


class _SyncTimer:
    """Wall time per component name, synchronising the device around each block."""

    def __init__(self, device):
        self.device, self.times = device, defaultdict(float)

    @contextlib.contextmanager
    def __call__(self, name: str):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        t0 = time.perf_counter()
        yield
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.times[name] += time.perf_counter() - t0


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_gb(device) -> float:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")


def _reset_peak(device):
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _time_steps(fn, device, warmup: int, iters: int) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(iters):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        out.append(time.perf_counter() - t0)
    return out


def _train_step(model, opt, loss_fn, amp_dtype, device):
    with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        losses = loss_fn()
        total = sum(losses.values())
    opt.zero_grad(set_to_none=True)
    total.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
    opt.step()


def bench_model(data_sv: str, data_mv: str, out_json: str, *, dtype: str = "bf16", sv_batch: int = 16,
                mv_batch: int = 4, clip: int = 8, warmup: int = 3, iters: int = 10, stream_frames: int = 40,
                profile: bool = False) -> dict:
    """Time SV / MV training steps and online streaming; returns (and writes) the numbers."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    amp = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[dtype]
    torch.manual_seed(0)
    res: dict = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu", "dtype": dtype}

    sv = SVFrameDataset(data_sv, "train", "scannet200")
    frames = [sv[i % len(sv)] for i in range(sv_batch)]
    sv_batch_t = PointBatch.from_dict(collate_frames(frames)).to(device)
    model = build_model(ModelConfig(num_semantic=200, class_agnostic=True)).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    _reset_peak(device)
    t = _time_steps(lambda: _train_step(model, opt, lambda: model.loss_sv(sv_batch_t), amp, device), device, warmup, iters)
    res["sv_train"] = {"batch": sv_batch, "ms_per_step_p50": 1e3 * float(np.median(t)),
                       "frames_per_s": sv_batch / float(np.median(t)), "peak_gb": _peak_gb(device)}
    if profile:
        from torch.profiler import ProfilerActivity, profile as torch_profile

        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with torch_profile(activities=acts, record_shapes=False) as prof:
            _train_step(model, opt, lambda: model.loss_sv(sv_batch_t), amp, device)
            _sync(device)
        table = prof.key_averages().table(sort_by="cpu_time_total", row_limit=40)
        Path(out_json).with_suffix(".sv_profile.txt").write_text(table)
    del model, opt

    mv = MVClipDataset(data_mv, "train", "scannet200", num_frames=clip, seed=0)
    clips = [mv[i % len(mv)] for i in range(mv_batch)]
    mv_batches = [PointBatch.from_dict(b).to(device) for b in collate_clips(clips)]
    model = build_model(ModelConfig(num_semantic=200, class_agnostic=True, online=True)).to(device).train()
    res["params"] = count_parameters(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    _reset_peak(device)
    t = _time_steps(lambda: _train_step(model, opt, lambda: model.loss_mv(mv_batches), amp, device), device, warmup, iters)
    res["mv_train"] = {"batch": mv_batch, "clip": clip, "ms_per_step_p50": 1e3 * float(np.median(t)),
                       "frames_per_s": mv_batch * clip / float(np.median(t)), "peak_gb": _peak_gb(device)}

    model.eval()
    if device.type == "cuda" and amp is not None:
        half_sparse_for_inference(model)
    scene = MVClipDataset(data_mv, "val", "scannet200", num_frames=-1)[0][:stream_frames]
    stream = [PointBatch.from_dict(collate_frames([f])).to(device) for f in scene]
    timer = _SyncTimer(device)
    seg = OnlineSegmenter(model, OnlineConfig(inst_score_thr=0.25), timer=timer)
    per_frame, comp = [], defaultdict(list)
    _reset_peak(device)
    with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
        for rep in range(2):  # first pass warms up (spconv tunes its kernels), second is measured
            seg.reset()
            for f in stream:
                timer.times.clear()
                _sync(device)
                t0 = time.perf_counter()
                seg.step(f)
                _sync(device)
                if rep:
                    per_frame.append(time.perf_counter() - t0)
                    for k, v in timer.times.items():
                        comp[k].append(v)
        seg_plain = OnlineSegmenter(model, OnlineConfig(inst_score_thr=0.25))
        plain = []
        for f in stream:
            _sync(device)
            t0 = time.perf_counter()
            seg_plain.step(f)
            _sync(device)
            plain.append(time.perf_counter() - t0)
    ms = lambda xs, q: 1e3 * float(np.percentile(xs, q))  # noqa: E731
    res["online"] = {"frames": len(stream), "points_per_frame": int(stream[0].coord.shape[0]),
                     "ms_p50": ms(plain, 50), "ms_p90": ms(plain, 90),
                     "ms_p50_with_component_syncs": ms(per_frame, 50),
                     "components_ms_p50": {k: ms(v, 50) for k, v in comp.items()}, "peak_gb": _peak_gb(device)}
    Path(out_json).parent.mkdir(parents=True, exist_ok=True)
    Path(out_json).write_text(json.dumps(res, indent=2))
    _print(res)
    return res


def _print(res: dict) -> None:
    print(f"device: {res['device']}, autocast {res['dtype']}")
    print("| run | ms (p50) | frames/s | peak GB |\n|---|---|---|---|")
    s, m, o = res["sv_train"], res["mv_train"], res["online"]
    print(f"| SV train step, batch {s['batch']} × 20k pts | {s['ms_per_step_p50']:.1f} | {s['frames_per_s']:.1f} | {s['peak_gb']:.2f} |")
    print(f"| MV train step, {m['batch']} clips × {m['clip']} frames | {m['ms_per_step_p50']:.1f} | {m['frames_per_s']:.1f} | {m['peak_gb']:.2f} |")
    print(f"| online inference per frame (p50 / p90) | {o['ms_p50']:.1f} / {o['ms_p90']:.1f} | {1e3 / o['ms_p50']:.1f} | {o['peak_gb']:.2f} |")
    print("\n| online component | ms per frame (p50) |\n|---|---|")
    for k, v in o["components_ms_p50"].items():
        print(f"| {k} | {v:.2f} |")
    print("\nparams:", json.dumps(res.get("params", {})))
