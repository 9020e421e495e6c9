"""AdamW with parameter groups, and the cosine-with-warmup schedule in iterations (seed §3)."""
from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["param_groups", "build_optimizer", "lr_factor"]


def param_groups(model: nn.Module, weight_decay: float, no_decay: list[str]) -> list[dict]:
    """Two groups: parameters whose name contains a `no_decay` fragment (norms, biases, Tiny-SA's
    `pos_embed`) get weight decay 0; everything else gets `weight_decay`. 1-D tensors are norms or
    biases whatever their name, so they join the no-decay group too."""
    decay, skip = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (skip if p.ndim <= 1 or any(k in name for k in no_decay) else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": skip, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, lr: float, weight_decay: float, betas, no_decay: list[str]) -> torch.optim.AdamW:
    return torch.optim.AdamW(param_groups(model, weight_decay, no_decay), lr=lr, betas=tuple(betas))


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
