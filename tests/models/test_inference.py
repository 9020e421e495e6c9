"""Preparing a model for inference (BN folded, gather convs or spconv) changes no output (beyond float rounding)."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from oseg3d.errors import ConfigError
from oseg3d.models.batch import PointBatch
from oseg3d.models.build import ModelConfig, build_model
from oseg3d.models.gather_conv import GatherConv, use_gather_convs
from oseg3d.models.inference import fold_batchnorm, prepare_for_inference
from oseg3d.models.sparse import SparseBNReLU

from ._synth import make_batch, make_frame, random_pose


def _randomise(model: nn.Module) -> None:
    """Trained-looking BN statistics and non-zero adapters (fresh ones are the identity, which folds trivially)."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm1d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.3)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
        if model.memory is not None:
            for p in model.memory.parameters():
                if p.dim() > 1:
                    p.copy_(torch.randn(p.shape, generator=g) * 0.02)


def _features(model, batches):
    if model.memory is not None:
        model.memory.reset()
    with torch.no_grad():
        return [model.voxel_features(b, b.coord, use_memory=model.memory is not None)[1] for b in batches]


def _reference(online: bool, seed: int):
    """A randomised model, three frames of one scene and the model's voxel features of them."""
    rng = np.random.default_rng(seed)
    pose = random_pose(rng)
    batches = [PointBatch.from_dict(make_batch([make_frame(rng, 500, pose=pose)])) for _ in range(3)]
    torch.manual_seed(0)
    model = build_model(ModelConfig(online=online, sparse_engine="spconv")).eval()  # the reference: spconv, unprepared
    _randomise(model)
    return model, batches, _features(model, batches)


@pytest.mark.parametrize("online", [False, True])
def test_folded_model_gives_the_same_features(online):
    model, batches, ref = _reference(online, seed=0)
    folded = fold_batchnorm(copy.deepcopy(model))
    assert not any(isinstance(m, (nn.BatchNorm1d, SparseBNReLU)) for m in folded.backbone.modules())
    if online:
        assert not any(isinstance(m, nn.BatchNorm1d) for m in folded.memory.modules())
    out = _features(folded, batches)
    for a, b in zip(out, ref):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    assert any(r.abs().max() > 0.1 for r in ref)  # the comparison is not between zeros


@pytest.mark.parametrize("online", [False, True])
@pytest.mark.parametrize("engine", ["gather", "spconv"])
def test_prepared_model_gives_the_same_features(online, engine):
    model, batches, ref = _reference(online, seed=1)
    prepared = prepare_for_inference(copy.deepcopy(model), torch.device("cpu"), engine=engine)
    n_gather = sum(isinstance(m, GatherConv) for m in prepared.modules())
    assert n_gather == (0 if engine == "spconv" else sum(1 for m in model.modules() if hasattr(m, "indice_key")))
    for a, b in zip(_features(prepared, batches), ref):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_unknown_engine_is_refused():
    with pytest.raises(ValueError, match="unknown sparse engine"):
        prepare_for_inference(build_model(ModelConfig()), torch.device("cpu"), engine="cuda-magic")
    with pytest.raises(ValueError, match="model.sparse_engine=spconv"):  # gather convs cannot go back
        prepare_for_inference(build_model(ModelConfig(sparse_engine="gather")), torch.device("cpu"), engine="spconv")
    with pytest.raises(ConfigError, match="sparse_engine"):
        build_model(ModelConfig(sparse_engine="cuda-magic"))


@pytest.mark.parametrize("online", [False, True])
def test_gather_built_model_prepares_to_the_same_features(online):
    """The product's path: built with gather convs (the default), trained, then prepared."""
    model, batches, ref = _reference(online, seed=2)
    gather = use_gather_convs(copy.deepcopy(model))
    for a, b in zip(_features(prepare_for_inference(gather, torch.device("cpu")), batches), ref):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
