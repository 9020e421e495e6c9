"""The LightningModule around ESAM: losses, optimiser + schedule, logging, validation through a validator.

The validator (built by the caller, e.g. `oseg3d.eval.validation`) owns metric computation so the
training engine does not depend on the evaluation package: `reset()`, `update(model, batch)`,
`compute() -> dict[str, float]`.
"""
from __future__ import annotations

import time

import lightning as L
import torch

from oseg3d.engine.optim import build_optimizer, lr_factor
from oseg3d.models.batch import PointBatch

__all__ = ["ESAMLitModule"]

_MAIN_TERMS = ("loss_cls", "loss_bce", "loss_dice", "loss_bbox", "loss_sem", "loss_merge")


class ESAMLitModule(L.LightningModule):
    """Trains one ESAM model (SV or MV) with the config's optimiser and schedule."""

    def __init__(self, model: torch.nn.Module, mode: str, optim, schedule, validator=None, log_every: int = 50):
        super().__init__()
        self.model, self.mode, self.optim_cfg, self.sched_cfg = model, mode, optim, schedule
        self.validator, self.log_every = validator, log_every
        self._t_batch_end = None
        self._t_batch_start = None

    # ---- training ---------------------------------------------------------------------------------
    def training_step(self, batch, batch_idx):
        if self.mode == "sv":
            losses = self.model.loss_sv(PointBatch.from_dict(batch))
            n_frames = batch["offset"].numel()
        else:
            clips = [PointBatch.from_dict(b) for b in batch]
            losses = self.model.loss_mv(clips)
            n_frames = sum(c.num_frames for c in clips)
        total = sum(losses.values())
        logs = {f"train/{k}": v.detach() for k, v in losses.items() if k in _MAIN_TERMS}
        logs["train/loss_aux"] = sum((v.detach() for k, v in losses.items() if k.startswith("aux")),
                                     torch.zeros((), device=total.device))
        logs["train/loss"] = total.detach()
        logs.update(self.clip_logs())
        self.log_dict(logs, on_step=True, on_epoch=False, prog_bar=False, batch_size=n_frames)
        self.log("loss", total.detach(), prog_bar=True, on_step=True, logger=False, batch_size=n_frames)
        return total

    def clip_logs(self) -> dict[str, float]:
        """`train/clip_fallback_frames`: frames whose CLIP conv1 ran online so far (no precomputed features;
        cumulative, this process, every forward of the model incl. validation); {} without a Bi-Fusion encoder.
        Should stay 0 once `precompute_clip` has run over the dataset."""
        bi = getattr(self.model, "bi_encoder", None)
        if bi is None:
            return {}
        return {"train/clip_fallback_frames": float(bi.fallback_frames)}

    def on_train_batch_start(self, batch, batch_idx):
        self._t_batch_start = time.perf_counter()
        if self._t_batch_end is not None and self.global_step % self.log_every == 0:
            self.log("train/data_time_s", self._t_batch_start - self._t_batch_end, on_step=True)

    def on_train_batch_end(self, outputs, batch, batch_idx):
        now = time.perf_counter()
        if self.global_step % self.log_every == 0:
            self.log("train/iter_time_s", now - self._t_batch_start, on_step=True)
            self.log("train/lr", self.optimizers().param_groups[0]["lr"], on_step=True)
            if torch.cuda.is_available():
                self.log("train/gpu_mem_gb", torch.cuda.max_memory_allocated() / 2**30, on_step=True)
        self._t_batch_end = now

    def configure_optimizers(self):
        o, s = self.optim_cfg, self.sched_cfg
        opt = build_optimizer(self.model, o.lr, o.weight_decay, o.betas, list(o.no_decay))
        total = max(1, int(self.trainer.estimated_stepping_batches))
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda step: lr_factor(step, total, s.warmup_iters, s.warmup_ratio, s.min_lr_ratio))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # ---- validation -------------------------------------------------------------------------------
    def on_validation_epoch_start(self):
        if self.validator is not None:
            self.validator.reset()

    def validation_step(self, batch, batch_idx):
        if self.validator is not None:
            self.validator.update(self.model, batch)

    def on_validation_epoch_end(self):
        if self.validator is None:
            return
        metrics = self.validator.compute()
        # sync_dist: every rank computed the same metric set on its shard; average them (DDP)
        self.log_dict({f"val/{k}": float(v) for k, v in metrics.items()}, sync_dist=True)
