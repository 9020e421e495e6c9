"""Configs: deltas on _base_, overrides, strict keys and types with the file named."""
from __future__ import annotations

import pytest

from oseg3d.configs import config_names, config_to_yaml, load_config
from oseg3d.errors import ConfigError
from oseg3d.models.build import build_model


def test_route1_configs_exist_and_carry_the_seed_hyper_parameters():
    names = set(config_names())
    assert {"ESAM_sv_3d_scannet", "ESAM_online_3d_scannet", "ESAM_sv_3d_scannet200", "ESAM_online_3d_scannet200"} <= names
    sv = load_config("ESAM_sv_3d_scannet")
    assert (sv.optim.lr, sv.optim.weight_decay, sv.schedule.epochs, sv.schedule.warmup_iters) == (6e-4, 1e-2, 128, 1000)
    assert sv.data.batch_size == 16 and sv.model.bbox_head is False and sv.train.keep_checkpoints == 3
    mv = load_config("ESAM_online_3d_scannet200")
    assert mv.model.online and mv.model.class_agnostic and mv.model.num_semantic == 200
    assert mv.model.memory_queue == -1 and mv.data.num_frames == 8 and mv.data.mode == "mv"
    assert mv.optim.lr == 6e-4  # inherited through two deltas


@pytest.mark.parametrize("name", ["ESAM_sv_3d_scannet", "ESAM_online_3d_scannet200"])
def test_configs_build_their_models(name):
    model = build_model(load_config(name).model)
    assert (model.memory is not None) == ("online" in name)


def test_overrides_apply_and_are_typed():
    cfg = load_config("ESAM_sv_3d_scannet", ["optim.lr=1e-4", "data.batch_size=2", "init.mapping={backbone.: x.}"])
    assert cfg.optim.lr == 1e-4 and cfg.data.batch_size == 2 and cfg.init.mapping == {"backbone.": "x."}
    assert "lr: 0.0001" in config_to_yaml(cfg)


@pytest.mark.parametrize("override, match", [
    ("optim.lrr=1", r"override optim.lrr=1: bad key or value 'optim.lrr'.*Fix:"),
    ("optim.lr=fast", r"'optim.lr'.*could not be converted"),
    ("data.batch_size", r"not key=value"),
])
def test_bad_overrides_name_the_key(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config("ESAM_sv_3d_scannet", [override])


def test_unknown_key_in_a_file_names_the_file(tmp_path):
    bad = tmp_path / "mine.yaml"
    bad.write_text("_base_: ESAM_sv_3d_scannet\nmodel: {num_clases: 3}\n")
    with pytest.raises(ConfigError, match=r"mine.yaml: bad key or value 'model.num_clases'"):
        load_config(str(bad))


def test_missing_config_and_base_loops(tmp_path):
    with pytest.raises(ConfigError, match="config not found"):
        load_config("ESAM_nope")
    a = tmp_path / "a.yaml"
    a.write_text("_base_: a.yaml\n")
    with pytest.raises(ConfigError, match="loops"):
        load_config(str(a))
