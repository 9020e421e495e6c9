"""AdamW with parameter groups, and the cosine-with-warmup schedule in iterations (seed §3)."""
from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["param_groups", "build_optimizer", "lr_factor"]


def param_groups(model: nn.Module, weight_decay: float, no_decay: list[str],
                 lr_mult: dict[str, float] | None = None) -> list[dict]:
    """AdamW parameter groups; frozen parameters (requires_grad False: the CLIP conv1) are left out.

    1) a name containing a `no_decay` fragment (norms, biases, Tiny-SA's `pos_embed`), or a 1-D tensor
       (a norm or bias whatever its name): weight decay 0 and the base lr, whatever `lr_mult` says (the
       seed keeps `pos_embed` out of lr scaling, §2.2);
    2) every other parameter: `weight_decay`, and the base lr times the multiplier of the longest
       `lr_mult` fragment in its name (1 without one), e.g. {"bi_encoder.backbone3d.": 0.1}.

    Returns:
        [decay group, no-decay group] without `lr_mult`; with it, one decay group per multiplier, then
        the no-decay group. Every group has "lr_mult" (1.0 for the no-decay group).
    """
    lr_mult = lr_mult or {}
    decay: dict[float, list] = {1.0: []}
    skip = []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim <= 1 or any(k in name for k in no_decay):
            skip.append(p)
            continue
        hits = [k for k in lr_mult if k in name]
        decay.setdefault(float(lr_mult[max(hits, key=len)]) if hits else 1.0, []).append(p)
    groups = [{"params": ps, "weight_decay": weight_decay, "lr_mult": m} for m, ps in decay.items() if ps or m == 1.0]
    return groups + [{"params": skip, "weight_decay": 0.0, "lr_mult": 1.0}]


def build_optimizer(model: nn.Module, lr: float, weight_decay: float, betas, no_decay: list[str],
                    lr_mult: dict[str, float] | None = None) -> torch.optim.AdamW:
    """AdamW over `param_groups`; each group's lr is `lr` × its "lr_mult" (the schedule scales them alike)."""
    groups = param_groups(model, weight_decay, no_decay, lr_mult)
    for g in groups:
        g["lr"] = lr * g["lr_mult"]
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas))


def lr_factor(step: int, total: int, warmup: int, warmup_ratio: float = 0.001, min_ratio: float = 0.0) -> float:
    """Multiplier of the base lr at iteration `step`.

    1) warmup: linear from `warmup_ratio` to 1 over `warmup` iterations;
    2) then cosine from 1 down to `min_ratio` at `total`;
    3) past `total` (a resumed run with more steps): stay at `min_ratio`.
    """
    if step < warmup:
        return warmup_ratio + (1 - warmup_ratio) * step / max(1, warmup)
    if step >= total:
        return min_ratio
    progress = (step - warmup) / max(1, total - warmup)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
