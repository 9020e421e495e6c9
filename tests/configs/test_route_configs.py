"""The twelve route configs (❶ 3d, ❷ 3dtsa, ❸ bifusion × SV / online × ScanNet / ScanNet200) load and build."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from oseg3d.configs import config_names, load_config
from oseg3d.engine.optim import build_optimizer
from oseg3d.errors import ConfigError
from oseg3d.models.batch import PointBatch
from oseg3d.models.build import build_model
from tests.models._synth import make_batch, make_frame

NAMES = [f"ESAM_{m}_{r}_{b}" for r in ("3d", "3dtsa", "bifusion") for m in ("sv", "online")
         for b in ("scannet", "scannet200")]
SMOKE = ["model.clip_random_init=true"]


def test_all_twelve_exist():
    assert set(NAMES) <= set(config_names())


@pytest.mark.parametrize("name", NAMES)
def test_config_loads_and_builds(name):
    route = name.split("_")[2]
    cfg = load_config(name, SMOKE if route == "bifusion" else [])
    assert cfg.model.neck == ("none" if route == "3d" else "tiny_sa")
    assert cfg.model.encoder == ("bifusion" if route == "bifusion" else "3d")
    assert cfg.data.clip_features == (route == "bifusion") and (cfg.data.mode == "mv") == ("online" in name)
    model = build_model(cfg.model)
    assert (model.neck is not None) == (route == "3dtsa") and (model.bi_encoder is not None) == (route == "bifusion")
    assert (model.memory is not None) == ("online" in name)


def test_bifusion_hyper_parameters_follow_the_seed():
    sv, mv = load_config("ESAM_sv_bifusion_scannet200"), load_config("ESAM_online_bifusion_scannet")
    assert (sv.optim.lr, sv.schedule.epochs, sv.schedule.warmup_iters) == (5e-4, 160, 2000)
    assert sv.model.num_semantic == 200 and sv.model.class_agnostic and sv.data.batch_size == 16
    assert sv.init.mapping == {"backbone.": "bi_encoder.backbone3d.", "neck.": "bi_encoder.neck."}
    assert mv.data.batch_size == load_config("ESAM_online_3d_scannet").data.batch_size // 2
    assert (mv.model.memory_queue, mv.data.num_frames, mv.optim.lr, mv.schedule.epochs) == (-1, 8, 5e-4, 160)
    assert mv.init.mapping == {}


def test_bifusion_without_clip_weights_says_which_key_to_set():
    with pytest.raises(ConfigError, match=r"model.clip_weights.*Fix: set model.clip_weights=.*clip_random_init=true"):
        build_model(load_config("ESAM_sv_bifusion_scannet").model)
    with pytest.raises(ConfigError, match="model.fuse_3d_to_2d"):
        build_model(load_config("ESAM_sv_bifusion_scannet", SMOKE + ["model.fuse_2d_to_3d=false"]).model)
    with pytest.raises(ConfigError, match="model.neck"):
        build_model(load_config("ESAM_sv_3d_scannet", ["model.neck=tinysa"]).model)


def test_bifusion_sv_training_step_with_random_clip():
    cfg = load_config("ESAM_sv_bifusion_scannet", SMOKE)
    torch.manual_seed(0)
    model = build_model(cfg.model).train()
    assert model.clip_source == "random-init (NOT CLIP weights)"
    rng = np.random.default_rng(0)
    batch = PointBatch.from_dict(make_batch([make_frame(rng, 400), make_frame(rng, 300)], [False, True],
                                            model.bi_encoder.clip2d))
    o = cfg.optim
    opt = build_optimizer(model, o.lr, o.weight_decay, o.betas, list(o.no_decay))
    before = model.bi_encoder.to_3d[0].weight.detach().clone()
    losses = model.loss_sv(batch)
    total = sum(losses.values())
    assert torch.isfinite(total)
    opt.zero_grad()
    total.backward()
    opt.step()
    assert not torch.equal(model.bi_encoder.to_3d[0].weight, before)
