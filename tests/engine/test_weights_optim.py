"""Partial load by key mapping, safetensors round trip, parameter groups and the lr schedule."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from oseg3d.engine.optim import lr_factor, param_groups
from oseg3d.engine.weights import load_state_dict, partial_load, save_weights
from oseg3d.errors import ConfigError


class _Src(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = nn.Linear(4, 3)
        self.head = nn.Linear(3, 2)


class _Dst(nn.Module):
    def __init__(self):
        super().__init__()
        self.bi_encoder = nn.Module()
        self.bi_encoder.backbone3d = nn.Linear(4, 3)
        self.head = nn.Linear(3, 5)  # another class count: shape mismatch
        self.fusion = nn.Linear(2, 2)  # new module: missing


def test_partial_load_maps_prefixes_and_reports(tmp_path):
    src, dst = _Src(), _Dst()
    uri = str(tmp_path / "model.safetensors")
    save_weights(src.state_dict(), uri)
    rep = partial_load(dst, load_state_dict(uri), {"backbone.": "bi_encoder.backbone3d.", "head.": "head."})
    assert rep.loaded == ["bi_encoder.backbone3d.bias", "bi_encoder.backbone3d.weight"]
    assert rep.shape_mismatch == ["head.bias", "head.weight"]
    assert set(rep.missing) == {"head.weight", "head.bias", "fusion.weight", "fusion.bias"}
    assert rep.unexpected == []
    assert torch.equal(dst.bi_encoder.backbone3d.weight, src.backbone.weight)
    assert "| loaded | 2 |" in rep.markdown()


def test_mapping_that_loads_nothing_is_an_error():
    with pytest.raises(ConfigError, match="loads no tensor"):
        partial_load(_Dst(), _Src().state_dict(), {"encoder.": "bi_encoder."}, "src.safetensors")


def test_lightning_checkpoint_is_read_weights_only(tmp_path):
    path = tmp_path / "x.ckpt"
    torch.save({"state_dict": {"model.backbone.weight": torch.ones(2)}, "epoch": 3}, path)
    assert list(load_state_dict(str(path))) == ["backbone.weight"]
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"w": torch.ones(1)}, "obj": _Src()}, evil)  # a pickled module: refused
    with pytest.raises(ConfigError, match="not a loadable checkpoint"):
        load_state_dict(str(evil))


def test_param_groups_skip_decay_for_norms_biases_and_pos_embed():
    m = nn.Sequential(nn.Linear(3, 3), nn.LayerNorm(3))
    m.pos_embed = nn.Parameter(torch.zeros(2, 3))
    decay, skip = param_groups(m, 0.01, ["pos_embed"])
    assert [p.shape for p in decay["params"]] == [torch.Size([3, 3])]
    assert len(skip["params"]) == 4 and skip["weight_decay"] == 0.0


def test_lr_schedule_warmup_then_cosine():
    assert lr_factor(0, 100, 10, 0.001) == pytest.approx(0.001)
    assert lr_factor(5, 100, 10, 0.0) == pytest.approx(0.5)
    assert lr_factor(10, 100, 10) == pytest.approx(1.0)
    assert lr_factor(55, 100, 10) == pytest.approx(0.5)
    assert lr_factor(100, 100, 10) == 0.0 and lr_factor(150, 100, 10) == 0.0
