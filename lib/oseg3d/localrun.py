"""Route ❶ end to end on one machine, without a cluster: world → datasets → SV → transfer → MV → evaluate.

The same step functions the pipeline components call, chained in order, each skipping work that is
already complete (create_data by scene fingerprints, training by resuming its run folder). Prints and
writes a summary table with the chance baseline (an untrained model) next to the trained numbers.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

from oseg3d.data.create_data import CreateDataParams, create_data
from oseg3d.scannet.synth import SynthSpec, write_world
from oseg3d.steps import evaluate, train, transfer

__all__ = ["run_route1"]

_COLS = ("all_ap", "all_ap_50%", "all_ap_25%", "miou", "mcov", "mwcov", "mprec", "mrec")


def run_route1(work: str, raw: str | None = None, benchmark: str = "scannet200", scenes: int = 3, frames: int = 41,
               val_fraction: float = 0.34, workers: int = 2, sv_overrides: list[str] | None = None,
               mv_overrides: list[str] | None = None, eval_items: int = 0, baseline: bool = True) -> dict:
    """Run route ❶; returns {stage: metrics} and writes `<work>/summary.{md,json}`."""
    w = Path(work)
    t0 = time.time()
    raw_root = raw or str(w / "raw")
    if raw is None:
        write_world(raw_root, SynthSpec(scenes=scenes, frames=frames, val_fraction=val_fraction), workers)
    data = {}
    for mode in ("sv", "mv"):
        data[mode] = str(w / f"{benchmark}_{mode}")
        create_data(raw_root, data[mode], CreateDataParams(kind=f"{benchmark}_{mode}"), workers=workers)
    sv_cfg, mv_cfg = f"ESAM_sv_3d_{benchmark}", f"ESAM_online_3d_{benchmark}"
    results, timings = {}, {}
    if baseline:
        # an untrained model with no score threshold: its masks are the "random masks" baseline
        results["MV, untrained (random masks)"] = evaluate.run(
            mv_cfg, data["mv"], "random-init", str(w / "eval_mv_random"),
            [*(mv_overrides or []), "eval.inst_score_thr=0.0"], max_items=eval_items)
    stage = time.time()
    train.run(sv_cfg, data["sv"], str(w / "train_sv"), sv_overrides)
    timings["train_sv_s"] = time.time() - stage
    results["SV"] = evaluate.run(sv_cfg, data["sv"], str(w / "train_sv" / "model_best.safetensors"),
                                 str(w / "eval_sv"), sv_overrides, max_items=eval_items)
    transfer.run(str(w / "train_sv" / "model_best.safetensors"), mv_cfg, str(w / "transfer_sv_mv"), {}, mv_overrides)
    stage = time.time()
    train.run(mv_cfg, data["mv"], str(w / "train_mv"), mv_overrides, init=str(w / "transfer_sv_mv" / "init.safetensors"))
    timings["train_mv_s"] = time.time() - stage
    results["MV"] = evaluate.run(mv_cfg, data["mv"], str(w / "train_mv" / "model_best.safetensors"),
                                 str(w / "eval_mv"), mv_overrides, max_items=eval_items)
    timings["total_s"] = time.time() - t0
    _write_summary(w, results, timings)
    return results


def _fmt(v) -> str:
    return "–" if v is None or v != v else f"{100 * v:.1f}"


def _write_summary(w: Path, results: dict, timings: dict) -> None:
    lines = ["| stage | " + " | ".join(_COLS) + " |", "|---" * (len(_COLS) + 1) + "|"]
    lines += [f"| {k} | " + " | ".join(_fmt(m.get(c)) for c in _COLS) + " |" for k, m in results.items()]
    lines += ["", "times: " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items())]
    md = "\n".join(lines)
    (w / "summary.md").write_text(md + "\n")
    (w / "summary.json").write_text(json.dumps({"results": results, "timings": timings}, indent=2, default=str))
    print(md)
    print(f"\nreports: {w.resolve()}/eval_*/report.md, runs: {w.resolve()}/train_*")
