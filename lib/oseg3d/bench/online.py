"""`oseg3d bench online`: per-frame latency of the full online step, per route, on the GPU.

Each route's online model (random weights: speed does not depend on them, bar the post-processing's
instance count) is prepared as the evaluate step prepares it (`prepare_for_inference`: BN folded,
sparse parts fp16, bf16 autocast) and streams a real-size synthetic val scene (20,000 points per frame)
twice: a pass with a synchronising timer per component (backbone = the encoder without the memory:
U-Net, neck, 2D branch, fusion; memory; decoder incl. pooling; post-processing; merge), then a plain
pass for the end-to-end p50 / p90. Also timed in the same run, for the ratios:
- backbone alone: the prepared 3D U-Net's forward on each frame (the ≤ 5 ms target);
- naive reference: the same U-Net unprepared, fp32, frame by frame (DESIGN §9's naive spconv loop), and
  the whole online step with the unprepared fp32 model;
- the spconv engine: the model prepared the same way but with spconv running the sparse convs instead of
  the gather convs (`prepare_for_inference(engine="spconv")`) — machines differ by tens of percent in
  host speed, so only ratios taken in one run compare;
- equality: the prepared model's voxel features against the fp32 reference (relative max error).
"""
from __future__ import annotations

import contextlib
import copy
import time
from collections import defaultdict
from pathlib import Path

import torch
from spconv.pytorch import SparseConvTensor

from oseg3d.bench.common import (device, device_name, gpu_busy_share, md_table, peak_gb, percentiles, prepare_data,
                                 reset_peak, sync, time_calls, write_result)
from oseg3d.configs import load_config
from oseg3d.data.collate import collate_frames
from oseg3d.data.datasets import MVClipDataset
from oseg3d.models.batch import PointBatch, voxelize
from oseg3d.models.build import build_model
from oseg3d.models.inference import prepare_for_inference
from oseg3d.models.online import OnlineConfig, OnlineSegmenter

__all__ = ["bench_online", "ROUTES"]

ROUTES = {"3d": "❶ 3D", "3dtsa": "❷ 3D+Tiny-SA", "bifusion": "❸ Bi-Fusion"}
COMPONENTS = ("backbone", "memory", "decoder", "postprocess", "merge")


class _Timer:
    """Synchronised seconds per component; `per_frame` keeps one dict per streamed frame."""

    def __init__(self, dev):
        self.dev, self.times, self.per_frame = dev, defaultdict(float), []

    @contextlib.contextmanager
    def __call__(self, name: str):
        sync(self.dev)
        t0 = time.perf_counter()
        yield
        sync(self.dev)
        self.times[name] += time.perf_counter() - t0


def online_model(route: str):
    """The route's online model on spconv (the naive reference; `prepare_for_inference` converts copies)."""
    sets = ["model.sparse_engine=spconv"] + (["model.clip_random_init=true"] if route == "bifusion" else [])
    return build_model(load_config(f"ESAM_online_{route}_scannet200", sets).model)


def _unet(model):
    return model.backbone if model.backbone is not None else model.bi_encoder.backbone3d


def _stream(model, frames, cfg, dev, timer=None) -> list[float]:
    seg = OnlineSegmenter(model, cfg, **({"timer": timer} if timer else {}))
    times = []
    for f in frames:
        if timer is not None:
            timer.times.clear()
        times += time_calls([lambda f=f: seg.step(f)], dev, warmup=0)
        if timer is not None:
            timer.per_frame.append(dict(timer.times))
    return times


def _voxel_inputs(model, frames) -> list[SparseConvTensor]:
    out = []
    for f in frames:
        v = voxelize(f.coord, f.feat, f.batch_index, f.num_frames, model.voxel_size)
        out.append(SparseConvTensor(v.features, v.indices, v.spatial_shape, v.batch_size))
    return out


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-12))


def bench_route(route: str, frames: list[PointBatch], dev, amp, out_dir: Path | None = None) -> dict:
    cfg = OnlineConfig(inst_score_thr=0.25)
    torch.manual_seed(0)
    naive = online_model(route).to(dev).eval()
    fast = prepare_for_inference(copy.deepcopy(naive), dev)
    spc = prepare_for_inference(copy.deepcopy(naive), dev, engine="spconv")
    row: dict = {}
    with torch.no_grad():
        # naive reference: fp32, unfolded, no autocast
        x = _voxel_inputs(naive, frames)
        unet = _unet(naive)
        row["naive_backbone"] = percentiles(time_calls([lambda x=x_: unet(x) for x_ in x], dev))
        _stream(naive, frames, cfg, dev)  # warm-up pass
        row["naive_online"] = percentiles(_stream(naive, frames, cfg, dev))
        ref = [naive.voxel_features(f, f.coord)[1] for f in frames[:3]]
        with torch.autocast(dev.type, dtype=amp, enabled=amp is not None):
            sunet = _unet(spc)
            row["spconv_backbone"] = percentiles(time_calls([lambda x=x_: sunet(x) for x_ in x], dev))
            _stream(spc, frames, cfg, dev)  # warm-up pass
            row["spconv_online"] = percentiles(_stream(spc, frames, cfg, dev))
            del spc
            funet = _unet(fast)
            row["backbone"] = percentiles(time_calls([lambda x=x_: funet(x) for x_ in x], dev))
            got = [fast.voxel_features(f, f.coord)[1] for f in frames[:3]]
            row["max_rel_err_vs_fp32"] = max(_rel_err(a, b) for a, b in zip(got, ref))
            reset_peak(dev)
            timer = _Timer(dev)
            _stream(fast, frames, cfg, dev, timer)  # warm-up pass (spconv tunes its kernels on first sight)
            timer.per_frame = []
            _stream(fast, frames, cfg, dev, timer)
            row["components_ms_p50"] = {k: percentiles([t.get(k, 0.0) for t in timer.per_frame])["ms_p50"]
                                        for k in COMPONENTS}
            row["online"] = percentiles(_stream(fast, frames, cfg, dev))
            row["peak_gb"] = peak_gb(dev)
            seg = OnlineSegmenter(fast, cfg)
            it = iter(frames * 2)
            table = out_dir / f"profile_online_{route}.txt" if out_dir else None
            row["profile"] = gpu_busy_share(lambda: seg.step(next(it)), dev, calls=5, table=table)
    row["ratio_online_vs_naive"] = row["naive_online"]["ms_p50"] / row["online"]["ms_p50"]
    row["ratio_backbone_vs_naive"] = row["naive_backbone"]["ms_p50"] / row["backbone"]["ms_p50"]
    return row


def bench_online(work: Path, out_json: str, routes=("3d", "3dtsa", "bifusion"), scenes: int = 3, frames: int = 81,
                 workers: int = 8, points: int = 20000, stream_frames: int = 40) -> dict:
    """Online per-frame latency per route; returns (and writes) the numbers."""
    dev = device()
    amp = torch.bfloat16 if dev.type == "cuda" else None
    _, data_mv = prepare_data(work, scenes, frames, workers, points)
    res: dict = {"device": device_name(dev), "autocast": str(amp), "routes": {}}
    for route in routes:
        if route == "bifusion":  # precomputed CLIP features, as the evaluate step reads them
            from oseg3d.steps import precompute_clip

            precompute_clip.run(data_mv, random_init=True, workers=workers, batch_size=64, progress=False)
        scene = MVClipDataset(data_mv, "val", "scannet200", num_frames=-1, clip_features=route == "bifusion")[0]
        stream = [PointBatch.from_dict(collate_frames([f])).to(dev) for f in scene[:stream_frames]]
        res["points_per_frame"] = int(stream[0].coord.shape[0])
        res["routes"][route] = bench_route(route, stream, dev, amp, Path(out_json).parent)
        del stream
    rows = []
    for route, r in res["routes"].items():
        c = r["components_ms_p50"]
        rows.append([ROUTES[route], r["online"]["ms_p50"], r["online"]["ms_p90"], r["naive_online"]["ms_p50"],
                     r["ratio_online_vs_naive"], r["spconv_online"]["ms_p50"], r["backbone"]["ms_p50"],
                     r["naive_backbone"]["ms_p50"], r["spconv_backbone"]["ms_p50"],
                     *(c[k] for k in COMPONENTS), r.get("profile", {}).get("launches_per_call", "–"),
                     r.get("profile", {}).get("gpu_busy_share", "–"), r["peak_gb"], f"{r['max_rel_err_vs_fp32']:.1e}"])
    table = (f"online step, {res['device']}, {res['points_per_frame']} points/frame, autocast {res['autocast']} "
             f"(targets: step ≤ 10 ms, backbone ≤ 5 ms)\n\n"
             + md_table(["route", "p50 ms", "p90 ms", "naive p50", "× naive", "backbone ms", "naive backbone",
                         *COMPONENTS, "launches", "GPU busy", "peak GB", "rel err"], rows))
    return write_result(out_json, res, table)
