"""Parameter groups: Tiny-SA's pos_embed gets neither weight decay nor lr scaling; frozen weights stay out."""
from __future__ import annotations

import pytest
import torch

from oseg3d.configs.schema import OptimConfig
from oseg3d.engine.optim import build_optimizer, param_groups
from oseg3d.models.tiny_sa import TinySA


class _Model(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = torch.nn.Linear(4, 4)
        self.neck = TinySA(12, num_heads=2, patch_size=8)
        self.frozen = torch.nn.Linear(4, 4)
        self.frozen.requires_grad_(False)


def _names(model, group):
    ids = {id(p) for p in group["params"]}
    return {n for n, p in model.named_parameters() if id(p) in ids}


def test_pos_embed_is_out_of_weight_decay_and_lr_scaling():
    m = _Model()
    no_decay = OptimConfig().no_decay
    groups = param_groups(m, 0.01, no_decay, lr_mult={"backbone.": 0.1, "neck.": 0.5})
    skip = next(g for g in groups if g["weight_decay"] == 0.0)
    pos = {n for n, _ in m.named_parameters() if "pos_embed" in n}
    assert len(pos) == 8 and pos <= _names(m, skip) and skip["lr_mult"] == 1.0
    by_mult = {g["lr_mult"]: _names(m, g) for g in groups if g["weight_decay"] > 0}
    assert by_mult[0.1] == {"backbone.weight"} and "neck.blocks.0.qkv.weight" in by_mult[0.5]
    assert not any(n.startswith("frozen.") for g in groups for n in _names(m, g))
    opt = build_optimizer(m, 1e-3, 0.01, (0.9, 0.999), no_decay, {"backbone.": 0.1, "neck.": 0.5})
    lrs = {g["lr_mult"]: g["lr"] for g in opt.param_groups}
    assert lrs[1.0] == pytest.approx(1e-3) and lrs[0.1] == pytest.approx(1e-4)
    pos_group = next(g for g in opt.param_groups if pos <= _names(m, g))
    assert pos_group["lr"] == pytest.approx(1e-3) and pos_group["weight_decay"] == 0.0


def test_without_lr_mult_two_groups_as_before():
    decay, skip = param_groups(_Model(), 0.01, OptimConfig().no_decay)
    assert decay["weight_decay"] == 0.01 and skip["weight_decay"] == 0.0
