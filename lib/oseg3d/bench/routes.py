"""`oseg3d bench routes`: what routes ❷ and ❸ cost over ❶ on the GPU, and precompute_clip throughput.

Per route (❶ 3D, ❷ 3D + Tiny-SA, ❸ Bi-Fusion with precomputed CLIP features): the SV training step at
batch 16 (ms, peak GB) and the online per-frame latency of the MV model streamed over a val scene. For ❸
also the online step when every frame computes CLIP conv1 from its image (the fallback path), which is
the 2D branch's full per-frame cost. precompute_clip runs first on the SV and MV datasets (frames/s).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from oseg3d.bench.model import _peak_gb, _reset_peak, _sync, _time_steps, _train_step, prepare_data
from oseg3d.configs import load_config
from oseg3d.data.collate import collate_frames
from oseg3d.data.datasets import MVClipDataset, SVFrameDataset
from oseg3d.models.batch import PointBatch
from oseg3d.models.build import build_model, count_parameters
from oseg3d.models.online import OnlineConfig, OnlineSegmenter
from oseg3d.models.sparse import half_sparse_for_inference

__all__ = ["bench_routes"]

ROUTES = (("❶ 3d", "3d"), ("❷ 3d+Tiny-SA", "3dtsa"), ("❸ Bi-Fusion", "bifusion"))


def _model(config: str):
    cfg = load_config(config, ["model.clip_random_init=true"] if "bifusion" in config else [])
    return build_model(cfg.model), cfg


def _online_ms(model, scene: list[dict], device, amp) -> tuple[float, float]:
    """p50 / p90 ms per frame of the online step (second pass; the first warms spconv's tuner up)."""
    stream = [PointBatch.from_dict(collate_frames([f])).to(device) for f in scene]
    seg = OnlineSegmenter(model, OnlineConfig(inst_score_thr=0.25))
    times = []
    with torch.autocast(device.type, dtype=amp), torch.no_grad():
        for rep in range(2):
            seg.reset()
            for f in stream:
                _sync(device)
                t0 = time.perf_counter()
                seg.step(f)
                _sync(device)
                if rep:
                    times.append(1e3 * (time.perf_counter() - t0))
    return float(np.percentile(times, 50)), float(np.percentile(times, 90))


def bench_routes(work: Path, out_json: str, scenes: int = 4, frames: int = 81, workers: int = 8,
                 sv_batch: int = 16, iters: int = 8, stream_frames: int = 30) -> dict:
    from oseg3d.steps import precompute_clip

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    amp = torch.bfloat16
    data_sv, data_mv = prepare_data(work, scenes, frames, workers)
    res: dict = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu", "clip": {}}
    for name, root in (("sv", data_sv), ("mv", data_mv)):
        for p in Path(root, "clip_feat").rglob("*.safetensors"):  # time a full pass, not a skip
            p.unlink()
        t0 = time.perf_counter()
        rep = precompute_clip.run(root, random_init=True, workers=workers, batch_size=64, progress=False)
        rep["wall_frames_per_s"] = rep.get("computed", 0) / (time.perf_counter() - t0)
        res["clip"][name] = rep
    res["routes"] = {}
    for label, route in ROUTES:
        row: dict = {}
        model, cfg = _model(f"ESAM_sv_{route}_scannet200")
        model.to(device).train()
        clip = route == "bifusion"
        sv = SVFrameDataset(data_sv, "train", "scannet200", clip_features=clip)
        batch = PointBatch.from_dict(collate_frames([sv[i % len(sv)] for i in range(sv_batch)])).to(device)
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        _reset_peak(device)
        t = _time_steps(lambda: _train_step(model, opt, lambda: model.loss_sv(batch), amp, device), device, 3, iters)
        row["sv_step_ms"], row["sv_peak_gb"] = 1e3 * float(np.median(t)), _peak_gb(device)
        row["params"] = count_parameters(model)
        del model, opt, batch
        torch.cuda.empty_cache() if device.type == "cuda" else None
        model, _ = _model(f"ESAM_online_{route}_scannet200")
        model.to(device).eval()
        if device.type == "cuda":
            half_sparse_for_inference(model)
        scene = MVClipDataset(data_mv, "val", "scannet200", num_frames=-1, clip_features=clip)[0][:stream_frames]
        _reset_peak(device)
        row["online_ms_p50"], row["online_ms_p90"] = _online_ms(model, scene, device, amp)
        row["online_peak_gb"] = _peak_gb(device)
        if clip:  # every frame through CLIP conv1 online: the 2D branch's whole per-frame cost
            fallback = MVClipDataset(data_mv, "val", "scannet200", num_frames=-1, clip_features=True)
            for p in Path(data_mv, "clip_feat").rglob("*.safetensors"):
                p.unlink()
            row["online_fallback_ms_p50"], _ = _online_ms(model, fallback[0][:stream_frames], device, amp)
        res["routes"][label] = row
        del model
    Path(out_json).parent.mkdir(parents=True, exist_ok=True)
    Path(out_json).write_text(json.dumps(res, indent=2, default=str))
    print(json.dumps({k: {kk: vv for kk, vv in v.items() if kk != "params"} for k, v in res["routes"].items()}, indent=1))
    print(json.dumps({k: {kk: v.get(kk) for kk in ("frames", "computed", "frames_per_s", "wall_frames_per_s")}
                      for k, v in res["clip"].items()}))
    return res
