"""Evaluate step: a trained model on a processed dataset's val split → metrics, Markdown report, plot.

SV: per-frame AP / mIoU / mCov...; MV: scenes streamed online and scored on the mesh. Writes
`metrics.json` and `metrics.csv` (flat scalars), `metrics_full.json` (per class), `report.md`, `confusion.json` (semantic
confusion matrix, for a KFP ClassificationMetrics artifact) and `per_class_ap.png`.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Subset

from oseg3d.data.collate import collate_frames
from oseg3d.data.datasets import MVClipDataset, SVFrameDataset
from oseg3d.engine.weights import load_state_dict, partial_load
from oseg3d.eval import html
from oseg3d.eval.report import ap_table_markdown, summary_markdown
from oseg3d.eval.parallel import default_workers
from oseg3d.models.build import build_model
from oseg3d.models.inference import prepare_for_inference
from oseg3d.steps.train import make_validator, resolve_config

__all__ = ["run", "top_confusion"]


def run(config: str, dataset: str, model_weights: str, out_dir: str, overrides: list[str] | None = None,
        max_items: int = 0, device: str | None = None) -> dict:
    """Evaluate; returns the flat metrics (also written under `out_dir`).

    `model_weights="random-init"` evaluates an untrained model: the chance baseline a trained model's
    numbers should be read against (always labelled as such in the report).
    """
    cfg = resolve_config(config, dataset, overrides)
    max_items = max_items or cfg.data.val_max_items
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.model)
    if model_weights != "random-init":
        # strict: another model's weights would leave the rest random and still produce numbers
        partial_load(model, load_state_dict(model_weights), {}, model_weights, strict=True)
    prepare_for_inference(model, dev)  # BN folded; sparse parts fp16 on the GPU
    validator = make_validator(cfg)
    validator.reset()
    d = cfg.data
    # Bi-Fusion: per-frame CLIP features (precomputed, else the image for conv1 online), as in training
    clip = {"clip_features": bool(getattr(d, "clip_features", False)), "raw_root": getattr(d, "raw_root", "") or ""}
    if d.mode == "sv":
        ds = SVFrameDataset(dataset, "val", d.benchmark, **clip)
        ds = Subset(ds, range(min(max_items, len(ds)))) if max_items else ds
        batches = DataLoader(ds, batch_size=4, num_workers=min(4, d.num_workers), collate_fn=collate_frames)
        to_dev = lambda b: {k: (v.to(dev) if torch.is_tensor(v) else v) for k, v in b.items()}  # noqa: E731
        items = (to_dev(b) for b in batches)
    else:
        ds = MVClipDataset(dataset, "val", d.benchmark, num_frames=-1, **clip)
        items = (ds[i] for i in range(min(max_items, len(ds)) if max_items else len(ds)))
    amp = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda")
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    frames, start = 0, time.perf_counter()
    with amp:
        for item in items:
            validator.update(model, item)
            frames += _num_frames(item)
    seconds = time.perf_counter() - start
    metrics = validator.compute(workers=default_workers())
    # cost columns of the routes' ablation table (wall time includes data loading and scoring)
    metrics["params_m"] = sum(p.numel() for p in model.parameters()) / 1e6
    metrics["ms_per_frame"] = 1000 * seconds / max(frames, 1)
    if dev.type == "cuda":
        metrics["peak_mem_gb"] = torch.cuda.max_memory_allocated(dev) / 2**30
    _write(Path(out_dir), f"{cfg.name} ({model_weights})", metrics, validator.last)
    return metrics


def _num_frames(item) -> int:
    """Frames in an SV batch dict or an MV scene (a list of frame dicts)."""
    if isinstance(item, list):
        return len(item)
    return len(item["offset"])


def _write(out: Path, name: str, metrics: dict, full: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    clean = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in metrics.items()}
    (out / "metrics.json").write_text(json.dumps(clean, indent=2))
    keys = sorted(clean)  # one CSV row too, so runs can be concatenated into a table
    (out / "metrics.csv").write_text(",".join(["name", *keys]) + "\n" + ",".join(
        [name.replace(",", ";"), *("" if clean[k] is None else f"{clean[k]:.6g}" for k in keys)]) + "\n")
    (out / "metrics_full.json").write_text(json.dumps(full, indent=2, default=_jsonable))
    sem = full["semantic"]
    (out / "confusion.json").write_text(json.dumps({"labels": list(sem["classes"]), "matrix": sem["confusion"]},
                                                   default=_jsonable))
    md = f"# Evaluation: {name}\n\n" + summary_markdown(metrics) + "\n\n## Instance AP per class\n\n"
    md += ap_table_markdown(full["ap"]) + "\n"
    (out / "report.md").write_text(md)
    _plot_ap(full["ap"], out / "per_class_ap.png")
    _plot_confusion(sem["classes"], sem["confusion"], out / "confusion.png")
    rows = [[k, _pct(v) if k not in _COST_KEYS else f"{v:.3g}"] for k, v in metrics.items()]
    ap_rows = [[c, _pct(v["ap"]), _pct(v["ap50%"]), _pct(v["ap25%"])] for c, v in full["ap"]["classes"].items()]
    (out / "report.html").write_text(html.page(f"Evaluation: {name}", [
        ("Summary", html.table(["metric", "value"], rows)),
        ("Instance AP per class (%)", html.table(["class", "AP", "AP50", "AP25"], ap_rows)
         + html.image(out / "per_class_ap.png", "per-class AP50")),
        ("Semantic confusion (classes with ground truth)", html.image(out / "confusion.png", "confusion matrix")),
    ]))


_COST_KEYS = ("params_m", "ms_per_frame", "peak_mem_gb")


def _pct(v) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.1f}"


def top_confusion(classes: list[str], matrix, limit: int = 30) -> tuple[list[str], list[list[int]]]:
    """The confusion sub-matrix of the `limit` classes with the most ground truth (rows = GT)."""
    import numpy as np

    m = np.asarray(matrix, dtype=np.int64)
    support = m.sum(1)
    keep = [i for i in np.argsort(-support, kind="stable")[:limit] if support[i] > 0]
    keep.sort()
    return [classes[i] for i in keep], m[np.ix_(keep, keep)].tolist()


def _plot_confusion(classes: list[str], matrix, path: Path) -> None:
    """Row-normalised confusion of the classes with the most ground truth."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import numpy as np
    except ImportError:
        return
    names, sub = top_confusion(list(classes), matrix)
    if not names:
        return
    m = np.asarray(sub, dtype=np.float64)
    m = m / np.maximum(m.sum(1, keepdims=True), 1)
    size = max(4, 0.3 * len(names))
    fig, ax = plt.subplots(figsize=(size + 1, size))
    im = ax.imshow(m, vmin=0, vmax=1, cmap="Blues")
    ax.set_xticks(range(len(names)), names, rotation=90, fontsize=7)
    ax.set_yticks(range(len(names)), names, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("ground truth")
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _jsonable(o):
    """numpy arrays and scalars for json (NaN → null is left to the reader's float parsing)."""
    return o.tolist() if hasattr(o, "tolist") else float(o)


def _plot_ap(ap: dict, path: Path) -> None:
    """Bar chart of per-class AP50 (classes with GT only)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # plots are a convenience; metrics and report are already written
        return
    items = [(k, v["ap50%"]) for k, v in ap["classes"].items() if not math.isnan(v["ap50%"])]
    fig, ax = plt.subplots(figsize=(max(4, 0.4 * len(items)), 3))
    ax.bar([k for k, _ in items], [100 * v for _, v in items])
    ax.set_ylabel("AP50 (%)")
    ax.set_ylim(0, 100)
    ax.tick_params(axis="x", rotation=60)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
