"""transfer step, route ❷ MV → ❸ SV: the config's init.mapping moves the U-Net and neck into the Bi-Fusion
encoder; the ❸ target builds once the caller names its CLIP weights (or random-init)."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from oseg3d.configs import load_config
from oseg3d.engine.weights import save_weights
from oseg3d.errors import ConfigError
from oseg3d.models.build import build_model
from oseg3d.steps import transfer

TARGET = "ESAM_sv_bifusion_scannet200"
RANDOM_CLIP = ["model.clip_random_init=true"]


@pytest.fixture(scope="module")
def route2_mv(tmp_path_factory):
    torch.manual_seed(0)
    model = build_model(load_config("ESAM_online_3dtsa_scannet200").model)
    path = tmp_path_factory.mktemp("src") / "model_best.safetensors"
    state = model.state_dict()
    save_weights(state, str(path))
    return str(path), state


def _check(out, state, summary):
    assert summary["loaded"] > 0 and summary["shape_mismatch"] == 0
    init = load_file(str(out / "init.safetensors"))
    assert len(init) == summary["loaded"]
    target = build_model(load_config(TARGET, RANDOM_CLIP).model).state_dict()
    moved = {k for k in target if k.startswith(("bi_encoder.backbone3d.", "bi_encoder.neck."))}
    assert set(init) == moved  # all of the U-Net and the neck, nothing else (decoder etc. start fresh)
    assert not any(".clip2d." in k for k in init)
    for k in init:
        src = k.replace("bi_encoder.backbone3d.", "backbone.", 1).replace("bi_encoder.neck.", "neck.", 1)
        assert torch.equal(init[k], state[src]), k
    assert "bi_encoder.backbone3d." in (out / "transfer_report.md").read_text()


def test_route2_mv_to_route3_sv_with_the_configs_mapping(route2_mv, tmp_path):
    src, state = route2_mv
    mapping = load_config(TARGET, RANDOM_CLIP).init.mapping
    assert mapping == {"backbone.": "bi_encoder.backbone3d.", "neck.": "bi_encoder.neck."}
    summary = transfer.run(src, TARGET, str(tmp_path / "explicit"), dict(mapping), RANDOM_CLIP)
    _check(tmp_path / "explicit", state, summary)
    # no mapping given: the target config's init.mapping, not "same names"
    default = transfer.run(src, TARGET, str(tmp_path / "default"), None, RANDOM_CLIP)
    assert default == summary
    _check(tmp_path / "default", state, default)


def test_route3_target_needs_clip_weights_or_random_init(route2_mv, tmp_path):
    with pytest.raises(ConfigError, match="clip_random_init"):
        transfer.run(route2_mv[0], TARGET, str(tmp_path / "x"))
    assert not (tmp_path / "x" / "init.safetensors").exists()
