"""`fit`: one training run from a resolved config, resumable after a kill.

Run folder (local):
    config.yaml               the resolved config
    checkpoints/*.ckpt        top-k weights by the monitored validation metric + last.ckpt (full, for resume)
    metrics.csv               loss terms, lr, data / iteration time, GPU memory every `log_every` steps
    model_best.safetensors    best weights (pickle-free hand-off to transfer / evaluate)
    model_last.safetensors
    summary.json              best score, steps, where things are

A rerun in the same folder resumes from `checkpoints/last.ckpt` (loaded with weights_only=True).
"""
from __future__ import annotations

import csv
import json
import os
import random
import shutil
import sys
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger

from oseg3d.configs import ExperimentConfig, save_config
from oseg3d.data.sampling import EpochSampler, epoch_seed
from oseg3d.engine.datamodule import ESAMDataModule
from oseg3d.engine.lit_module import ESAMLitModule
from oseg3d.engine.weights import LoadReport, check_fits, load_state_dict, partial_load, save_weights
from oseg3d.models.build import build_model

__all__ = ["fit", "merge_metrics"]


def _precision(cfg: ExperimentConfig) -> str:
    if torch.cuda.is_available():
        return cfg.train.precision
    return "32-true"  # no mixed precision on the CPU (spconv's CPU path is fp32)


class _FlatCSVLogger(CSVLogger):
    """CSVLogger writing straight into its folder (no version sub-folders)."""

    @property
    def log_dir(self) -> str:
        return self.root_dir


def _attempt_dir(run: Path) -> Path:
    """A fresh log folder per (re)start: Lightning's CSV writer deletes an existing metrics.csv."""
    logs = run / "logs"
    n = len(list(logs.glob("attempt*"))) if logs.is_dir() else 0
    return logs / f"attempt{n:02d}"


def merge_metrics(run: Path) -> Path:
    """`<run>/metrics.csv`: every attempt's rows in order; rows a restart redid (steps at or after the
    next attempt's first step) come from the later attempt."""
    attempts = sorted((run / "logs").glob("attempt*/metrics.csv"))
    tables = []
    for f in attempts:
        with open(f, newline="") as fh:
            tables.append(list(csv.DictReader(fh)))
    rows, keys = [], []
    for i, t in enumerate(tables):
        nxt = next((int(r["step"]) for r in tables[i + 1][:1]), None) if i + 1 < len(tables) else None
        rows += [r for r in t if nxt is None or int(r["step"]) < nxt]
        keys += [k for r in t[:1] for k in r if k not in keys]
    out = run / "metrics.csv"
    tmp = out.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=sorted(keys, key=lambda k: (k not in ("epoch", "step"), k)))
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, out)
    return out


def _running_epoch(trainer) -> int:
    """The epoch being run. `current_epoch` lags by one after a resume from an end-of-epoch checkpoint,
    and the value Lightning gives samplers runs one ahead there; the started-epoch counter is right."""
    return trainer.fit_loop.epoch_progress.current.ready - 1


class _Replayable(Callback):
    """Make a resumed run replay the uninterrupted one: the model's random choices (query subsets) are
    reseeded per (epoch, batch), and after a mid-epoch resume the sampler skips the items already trained
    on (Lightning restores the counters but restarts the data iterator)."""

    def __init__(self, seed: int):
        self.seed = seed

    def on_train_start(self, trainer, pl_module) -> None:  # after the checkpoint is restored
        progress = trainer.fit_loop.epoch_loop.batch_progress
        done = progress.current.ready  # still the previous epoch's count when resuming at an epoch boundary
        if progress.is_last_batch or done >= trainer.num_training_batches:
            done = 0
        sampler = getattr(trainer.train_dataloader, "sampler", None)
        if isinstance(sampler, EpochSampler):
            sampler.epoch_fn = lambda: _running_epoch(trainer)
            if done:
                sampler.skip_once(done * trainer.train_dataloader.batch_size)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        s = epoch_seed(self.seed, _running_epoch(trainer), batch_idx)
        torch.manual_seed(s)
        np.random.seed(s % 2**32)
        random.seed(s)


# NVLink multicast off in NCCL, PyTorch and NVSHMEM: on shared multi-GPU hosts a program using it can take the
# host's GPUs out of service. Defaults for every process this one starts (DDP workers inherit them); a value
# already in the environment wins, so an operator can still decide.
SAFE_COLLECTIVES_ENV = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}


def fit(cfg: ExperimentConfig, run_dir: str, validator=None, init_state: dict | None = None) -> dict:
    """Train `cfg` in `run_dir` (resuming if it holds a last checkpoint); returns the summary.

    Args:
        cfg: resolved experiment config (`cfg.data.root` must point at a processed dataset).
        run_dir: local run folder.
        validator: metric collector for validation (see lit_module); None disables validation.
        init_state: weights to partially load before training (already mapped by the caller), or None
            to use `cfg.init.checkpoint` with `cfg.init.mapping`.
    """
    for name, value in SAFE_COLLECTIVES_ENV.items():
        os.environ.setdefault(name, value)
    run = Path(run_dir)
    (run / "checkpoints").mkdir(parents=True, exist_ok=True)
    save_config(cfg, run / "config.yaml")
    L.seed_everything(cfg.train.seed, workers=True, verbose=False)
    model = build_model(cfg.model)
    report: LoadReport | None = None
    if init_state is not None:
        report = partial_load(model, init_state, {}, "init weights")
    elif cfg.init.checkpoint:
        report = partial_load(model, load_state_dict(cfg.init.checkpoint), dict(cfg.init.mapping), cfg.init.checkpoint)
    if report is not None:
        (run / "init_report.md").write_text(report.markdown() + "\n")

    d = cfg.data
    dm = ESAMDataModule.from_config(d, cfg.train.seed)
    lit = ESAMLitModule(model, d.mode, cfg.optim, cfg.schedule, validator, cfg.train.log_every)
    monitor = cfg.train.monitor if validator is not None else None
    # top-k by the metric, weights only (they only feed the best-weights export: a third of a full
    # checkpoint's size); last.ckpt, with optimizer and loop state, is the one resume needs
    ckpt = ModelCheckpoint(dirpath=run / "checkpoints", monitor=monitor, mode="max", save_top_k=cfg.train.keep_checkpoints if monitor else 0,
                           save_weights_only=True, filename="epoch{epoch:03d}-step{step:06d}", auto_insert_metric_name=False)
    # both last-savers write the one last.ckpt (the version counter would add a second, last-v1.ckpt)
    last_saver = ModelCheckpoint(dirpath=run / "checkpoints", save_top_k=0, save_last=True, enable_version_counter=False)
    callbacks = [ckpt, last_saver, TQDMProgressBar(refresh_rate=10), _Replayable(cfg.train.seed)]
    if cfg.train.ckpt_every_steps > 0:  # mid-epoch last.ckpt, so a kill loses at most this many steps
        callbacks.append(ModelCheckpoint(dirpath=run / "checkpoints", save_top_k=0, save_last=True, enable_version_counter=False,
                                         every_n_train_steps=cfg.train.ckpt_every_steps))
    trainer = L.Trainer(
        default_root_dir=str(run), max_epochs=cfg.schedule.epochs, max_steps=cfg.train.max_steps,
        accelerator=cfg.train.accelerator, devices=cfg.train.devices, precision=_precision(cfg),
        gradient_clip_val=cfg.optim.clip_grad, log_every_n_steps=cfg.train.log_every,
        check_val_every_n_epoch=cfg.train.val_every_epochs, num_sanity_val_steps=0,
        limit_val_batches=1.0 if validator is not None else 0, callbacks=callbacks,
        logger=_FlatCSVLogger(str(_attempt_dir(run)), name="", version=""), enable_model_summary=False,
        use_distributed_sampler=True,
    )
    last = run / "checkpoints" / "last.ckpt"
    if last.is_file():
        # a run folder of another config: a named error, not a RuntimeError from deep inside Lightning
        check_fits(model, load_state_dict(str(last)), str(last))
        print(f"[oseg3d] train: resuming from {last}", file=sys.stderr, flush=True)
    trainer.fit(lit, datamodule=dm, ckpt_path=str(last) if last.is_file() else None, weights_only=True)
    summary = {"global_step": trainer.global_step, "epochs": trainer.current_epoch,
               "best_score": float(ckpt.best_model_score) if ckpt.best_model_score is not None else None,
               "monitor": monitor, "init": report.summary() if report else None}
    if trainer.is_global_zero:
        merge_metrics(run)
        _export(run, ckpt, lit, summary)
    return summary


def _export(run: Path, ckpt: ModelCheckpoint, lit: ESAMLitModule, summary: dict) -> None:
    """Best and last weights as safetensors (the hand-off format), summary.json last."""
    save_weights(lit.model.state_dict(), str(run / "model_last.safetensors"))
    best = ckpt.best_model_path
    if best and os.path.isfile(best):
        save_weights(load_state_dict(best), str(run / "model_best.safetensors"))
    else:  # no validation metric: the last weights are the best we have (a hard link: same bytes, no 2nd copy)
        _link_or_copy(run / "model_last.safetensors", run / "model_best.safetensors")
    tmp = run / "summary.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2))
    os.replace(tmp, run / "summary.json")


def _link_or_copy(src: Path, dst: Path) -> None:
    tmp = dst.with_name(dst.name + ".tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:  # file systems without hard links
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)
