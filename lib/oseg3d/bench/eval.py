"""`oseg3d bench eval`: seconds to score a ScanNet-val-sized set (312 scenes) — what the evaluate step
does after inference: collect each scene's predictions and GT (bit-packed masks, GT id encoding,
confusion matrix), then instance AP, coverage and semantic IoU over all scenes.

Scenes are synthetic at ScanNet-mesh size (150,000 points, 25 GT instances, the online output's 100
predicted masks: each GT instance's mask with jittered borders, duplicates and false positives); the
synthesis is not timed. CPU only (the metric code is numpy).
"""
from __future__ import annotations

import time

import numpy as np

from oseg3d.bench.common import md_table, write_result
from oseg3d.eval.parallel import default_workers
from oseg3d.eval.validation import ScoreCollector

__all__ = ["bench_eval", "synthetic_scene"]


def synthetic_scene(rng: np.random.Generator, points: int, instances: int, preds: int, num_semantic: int):
    """(masks (preds, N) bool, labels, scores, gt_instance, gt_class, pred_class) of one scene."""
    cuts = np.sort(rng.choice(np.arange(1, points), 2 * instances, replace=False)).reshape(-1, 2)
    inst = np.zeros(points, np.int64)
    cls = rng.integers(0, 2, points)  # stuff (wall / floor) where no instance
    for i, (lo, hi) in enumerate(cuts, 1):
        inst[lo:hi] = i
        cls[lo:hi] = rng.integers(2, num_semantic)
    masks = np.zeros((preds, points), bool)
    for j in range(preds):
        lo, hi = cuts[j % instances] if j < 2 * instances else np.sort(rng.integers(0, points, 2))
        w = max(1, (hi - lo) // 5)
        masks[j, max(0, lo + rng.integers(-w, w)):max(0, hi + rng.integers(-w, w))] = True
    noisy = np.where(rng.random(points) < 0.2, rng.integers(0, num_semantic, points), cls)
    return masks, np.zeros(preds, np.int64), rng.random(preds), inst, cls, noisy


def bench_eval(out_json: str, scenes: int = 312, points: int = 150_000, instances: int = 25, preds: int = 100,
               benchmark: str = "scannet200", workers: int = 0) -> dict:
    agnostic, num_semantic = benchmark == "scannet200", 200 if benchmark == "scannet200" else 20
    rng = np.random.default_rng(0)
    col = ScoreCollector(benchmark, agnostic, num_semantic)
    collect = 0.0
    for _ in range(scenes):
        scene = synthetic_scene(rng, points, instances, preds, num_semantic)
        if not agnostic:
            scene = (scene[0], rng.integers(0, len(col.thing_ids), preds), *scene[2:])
        t0 = time.perf_counter()
        col.add(*scene)
        collect += time.perf_counter() - t0
    t0 = time.perf_counter()
    workers = workers or default_workers()
    metrics = col.compute(workers)
    score = time.perf_counter() - t0
    res = {"workers": workers, "scenes": scenes, "points": points, "instances": instances, "preds": preds, "benchmark": benchmark,
           "collect_s": collect, "compute_s": score, "total_s": collect + score,
           "ap50": metrics.get("all_ap_50%"), "miou": metrics.get("miou")}
    table = (f"evaluation of {scenes} scenes × {points:,} points, {preds} predicted masks, {benchmark}, "
             f"{workers} processes (target ≤ 10 s)\n\n"
             + md_table(["collect s", "compute s", "total s", "target s"], [[collect, score, collect + score, 10.0]]))
    return write_result(out_json, res, table)
