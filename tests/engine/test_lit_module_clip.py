"""The LitModule reports the Bi-Fusion encoder's CLIP fallbacks (frames whose conv1 ran online)."""
from __future__ import annotations

import numpy as np
import torch

from oseg3d.clip.conv1 import load_clip_conv1
from oseg3d.engine.lit_module import ESAMLitModule
from oseg3d.models.build import ModelConfig, build_model
from tests.models._synth import make_batch, make_frame


def _capture(lit: ESAMLitModule) -> list[dict]:
    logged: list[dict] = []
    lit.log_dict = lambda d, **kw: logged.append(dict(d))  # no trainer here: record instead of logging
    lit.log = lambda *a, **kw: None
    return logged


def test_training_step_logs_the_cumulative_clip_fallback_count():
    clip = load_clip_conv1(None, allow_random_init=True)[0]
    rng = np.random.default_rng(0)
    batch = make_batch([make_frame(rng, 300), make_frame(rng, 250), make_frame(rng, 200)], [True, False, False], clip)
    torch.manual_seed(0)
    model = build_model(ModelConfig(neck="tiny_sa", encoder="bifusion", clip_random_init=True)).train()
    lit = ESAMLitModule(model, "sv", optim=None, schedule=None)
    logged = _capture(lit)
    assert lit.clip_logs() == {"train/clip_fallback_frames": 0.0}
    for _ in range(2):
        loss = lit.training_step(batch, 0)
        assert torch.isfinite(loss)
    assert [d["train/clip_fallback_frames"] for d in logged] == [2.0, 4.0]  # cumulative
    assert "train/loss" in logged[-1]


def test_no_clip_key_without_a_bifusion_encoder():
    lit = ESAMLitModule(build_model(ModelConfig(neck="tiny_sa")), "sv", optim=None, schedule=None)
    assert lit.clip_logs() == {}
