"""The functions KFP components call: artifacts in, artifacts out, one per component.

Each wraps a step's `run(...)` in `artifacts.run_step` (home, fingerprint, skip when complete, staging) and
publishes the small files people browse (reports, metrics) through KFP's own artifact path. Artifacts are
duck-typed (`.path`, `.uri`, `.metadata`, `log_metric`, ...) so tests can pass simple stand-ins.
"""
from __future__ import annotations

import json
import math
import os

from oseg3d import storage
from oseg3d.steps.artifacts import publish, read_ref, run_step
from oseg3d.storage.uri import join

__all__ = ["create_data", "precompute_clip", "train", "transfer", "evaluate", "compare"]


def clip_overrides(config: str, clip_weights: str) -> list[str]:
    """Where a Bi-Fusion config's frozen CLIP conv1 comes from: the given weights, else an explicit random
    init (every report then says "random-init"); nothing for the 3D routes."""
    from oseg3d.configs import load_config

    if load_config(config).model.encoder != "bifusion":
        return []
    return [f"model.clip_weights={clip_weights}"] if clip_weights else ["model.clip_random_init=true"]


def create_data(kind: str, raw_uri: str, synth_scenes: int, synth_frames: int, num_points: int, workspace: str,
                dataset, report) -> dict:
    """Processed dataset (raw ScanNet at `raw_uri`, or a synthetic world when it is empty)."""
    from oseg3d.steps import create_data as step

    params = {"kind": kind, "raw_uri": raw_uri, "synth": [synth_scenes, synth_frames] if not raw_uri else None,
              "num_points": num_points}
    body = lambda out, _: _jsonable(step.run(kind, out, raw_uri, synth_scenes, synth_frames,  # noqa: E731
                                             num_points=num_points))
    handle, result = run_step("create_data", params, {}, dataset.path, dataset.uri, workspace, body)
    publish(handle, "report.md", report.path)
    dataset.metadata.update({"kind": kind, "home": handle.uri})
    return result


def precompute_clip(clip_weights: str, workspace: str, dataset, features, report) -> dict:
    """CLIP conv1 features of every frame the loaders use, added beside the dataset's frames."""
    from oseg3d.steps import precompute_clip as step

    source = read_ref(dataset.path)
    body = lambda home, _: _jsonable(step.run(home, weights=clip_weights, random_init=not clip_weights))  # noqa: E731
    handle, result = run_step("precompute_clip", {"clip_weights": clip_weights}, {"dataset": source},
                              features.path, features.uri, workspace, body, in_place="dataset")
    open(report.path, "w").write("# precompute_clip\n\n" + "\n".join(f"- {k}: {v}" for k, v in result.items()) + "\n")
    features.metadata.update({"home": handle.uri, "clip_source": result.get("source", "")})
    return result


def train(config: str, overrides: list, workspace: str, dataset, model, metrics, init=None,
          clip_weights: str = "") -> dict:
    """Train (a retry, or a rerun with the same workspace, resumes from the home's last checkpoint)."""
    from oseg3d.steps import train as step

    inputs = {"dataset": read_ref(dataset.path)}
    if init is not None:
        inputs["init"] = read_ref(init.path)

    def body(out: str, local: dict[str, str]) -> dict:
        weights = os.path.join(local["init"], "init.safetensors") if "init" in local else None
        return _jsonable(step.run(config, local["dataset"], out, overrides=overrides, init=weights))

    overrides = clip_overrides(config, clip_weights) + list(overrides)
    handle, summary = run_step("train", {"config": config, "overrides": overrides}, inputs, model.path,
                               model.uri, workspace, body)
    publish(handle, "metrics.csv", os.path.join(model.path, "metrics.csv"))
    publish(handle, "config.yaml", os.path.join(model.path, "config.yaml"))
    for k in ("global_step", "epochs", "best_score"):
        if isinstance(summary.get(k), (int, float)):
            metrics.log_metric(k, summary[k])
    model.metadata.update({"config": config, "home": handle.uri, "framework": "pytorch+spconv"})
    return summary


def transfer(source, target_config: str, workspace: str, init, report, clip_weights: str = "") -> dict:
    """Init weights for `target_config` from the source model's best weights, with a load report."""
    from oseg3d.steps import transfer as step

    def body(out: str, local: dict[str, str]) -> dict:
        return _jsonable(step.run(os.path.join(local["source"], "model_best.safetensors"), target_config, out,
                                  overrides=overrides))

    overrides = clip_overrides(target_config, clip_weights)
    handle, result = run_step("transfer", {"target_config": target_config, "overrides": overrides},
                              {"source": read_ref(source.path)},
                              init.path, init.uri, workspace, body)
    publish(handle, "transfer_report.md", report.path)
    return result


def evaluate(config: str, overrides: list, workspace: str, dataset, model, metrics, report, html_report,
             confusion, clip_weights: str = "") -> dict:
    """Scores (scalar Metrics), the Markdown and HTML reports and the semantic confusion matrix."""
    from oseg3d.steps import evaluate as step

    inputs = {"dataset": read_ref(dataset.path), "model": read_ref(model.path)}

    def body(out: str, local: dict[str, str]) -> dict:
        weights = os.path.join(local["model"], "model_best.safetensors")
        return _jsonable(step.run(config, local["dataset"], weights, out, overrides))

    overrides = clip_overrides(config, clip_weights) + list(overrides)
    handle, result = run_step("evaluate", {"config": config, "overrides": overrides}, inputs, metrics.path,
                              metrics.uri, workspace, body)
    for k, v in result.items():
        if isinstance(v, (int, float)) and not math.isnan(v):
            metrics.log_metric(_metric_name(k), float(v))
    metrics.metadata["config"] = config
    publish(handle, "report.md", report.path)
    publish(handle, "report.html", html_report.path)
    conf_uri = join(handle.uri, "confusion.json")
    if storage.exists(conf_uri):
        conf = storage.read_json(conf_uri)
        names, matrix = step.top_confusion(conf["labels"], conf["matrix"])
        if names:  # the KFP UI draws up to a few dozen classes legibly; the full matrix stays in the home
            confusion.log_confusion_matrix(names, matrix)
    return result


def compare(rows: dict[str, object], table_md, table_html) -> list[dict]:
    """The routes side by side: one row per evaluate Metrics artifact (label → artifact)."""
    from oseg3d.steps import compare as step

    values = {label: _metrics_of(m) for label, m in rows.items() if m is not None}
    md, page = step.render(values)
    os.makedirs(os.path.dirname(table_md.path) or ".", exist_ok=True)
    open(table_md.path, "w").write(md)
    open(table_html.path, "w").write(page)
    return [{"route": k, **v} for k, v in values.items()]


def _metric_name(key: str) -> str:
    """KFP metric names: letters, digits, `_`, `-` (ESAM's `all_ap_50%` → `all_ap_50`)."""
    return key.replace("%", "").replace("/", "_")


def _metrics_of(artifact) -> dict[str, float]:
    """Scalars of a KFP Metrics artifact (metadata, where log_metric puts them)."""
    return {k: float(v) for k, v in artifact.metadata.items() if isinstance(v, (int, float))}


def _jsonable(d: dict) -> dict:
    """A result dict as JSON can hold it (NaN → None; numpy scalars → float)."""
    out = {}
    for k, v in (d or {}).items():
        if hasattr(v, "item"):
            v = v.item()
        out[k] = None if isinstance(v, float) and math.isnan(v) else v
    return json.loads(json.dumps(out, default=str))


