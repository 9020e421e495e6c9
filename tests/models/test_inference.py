"""Folding BatchNorm into the spconv convs changes no output (beyond float rounding)."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from oseg3d.models.batch import PointBatch
from oseg3d.models.build import ModelConfig, build_model
from oseg3d.models.inference import fold_batchnorm
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


@pytest.mark.parametrize("online", [False, True])
def test_folded_model_gives_the_same_features(online):
    rng = np.random.default_rng(0)
    pose = random_pose(rng)
    batches = [PointBatch.from_dict(make_batch([make_frame(rng, 500, pose=pose)])) for _ in range(3)]
    torch.manual_seed(0)
    model = build_model(ModelConfig(online=online)).eval()
    _randomise(model)
    ref = _features(model, batches)
    folded = fold_batchnorm(copy.deepcopy(model))
    assert not any(isinstance(m, (nn.BatchNorm1d, SparseBNReLU)) for m in folded.backbone.modules())
    if online:
        assert not any(isinstance(m, nn.BatchNorm1d) for m in folded.memory.modules())
    out = _features(folded, batches)
    for a, b in zip(out, ref):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    assert any(r.abs().max() > 0.1 for r in ref)  # the comparison is not between zeros
