"""Train step: config + processed dataset (+ init weights) → run folder with best/last weights and metrics."""
from __future__ import annotations

import json
from pathlib import Path

from oseg3d.configs import ExperimentConfig, load_config
from oseg3d.engine.trainer import fit
from oseg3d.engine.weights import load_state_dict
from oseg3d.eval.validation import MVValidator, SVValidator

__all__ = ["run", "make_validator", "resolve_config"]


def resolve_config(config: str, dataset: str, overrides: list[str] | None = None) -> ExperimentConfig:
    """The config with the dataset root set (overrides win over everything)."""
    return load_config(config, [f"data.root={dataset}", *(overrides or [])])


def make_validator(cfg: ExperimentConfig):
    """The validator matching the config's mode (SV per frame, MV streamed scenes)."""
    m, d = cfg.model, cfg.data
    if d.mode == "sv":
        return SVValidator(d.benchmark, m.class_agnostic, m.num_semantic, cfg.eval)
    return MVValidator(d.benchmark, m.class_agnostic, m.num_semantic, cfg.eval, d.root)


def run(config: str, dataset: str, out_dir: str, overrides: list[str] | None = None, init: str | None = None,
        validate: bool = True) -> dict:
    """Train `config` on the processed `dataset` into `out_dir` (resumes if interrupted).

    Args:
        config: packaged config name or YAML path.
        dataset: local processed dataset root (create_data output).
        out_dir: run folder.
        overrides: `key=value` config overrides.
        init: init weights (a transfer step's `init.safetensors`, already in this model's key names).
        validate: run validation each `train.val_every_epochs` and keep the top-k by the metric.
    Returns:
        The run summary (also in `out_dir/summary.json`).
    """
    cfg = resolve_config(config, dataset, overrides)
    state = load_state_dict(init) if init else None
    summary = fit(cfg, out_dir, make_validator(cfg) if validate else None, init_state=state)
    Path(out_dir, "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
