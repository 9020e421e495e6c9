"""Memory adapters: ESAM's size, identity at initialisation, accumulation in absolute coordinates."""
from __future__ import annotations

import torch
from spconv.pytorch import SparseConvTensor

from oseg3d.models.memory import MemoryAdapter, MultilevelMemory
from oseg3d.models.pooling import GeoAwarePooling


def test_parameter_counts_match_esam():
    n = sum(p.numel() for p in MultilevelMemory().parameters())
    assert abs(n - 4.96e6) / 4.96e6 < 0.005, n
    assert abs(sum(p.numel() for p in GeoAwarePooling(96).parameters()) - 0.03e6) < 0.002e6


def _level(coords, feats, nb=1):
    idx = torch.cat([torch.zeros(len(coords), 1, dtype=torch.int32), torch.tensor(coords, dtype=torch.int32)], 1)
    return SparseConvTensor(feats, idx, [32, 32, 32], nb)


def test_fresh_adapters_are_the_identity_on_relu_features():
    torch.manual_seed(0)
    mem = MultilevelMemory(channels=(4, 4, 4, 4))
    levels = [_level([[1, 1, 1], [2, 1, 1], [5, 5, 5]], torch.rand(3, 4)) for _ in range(4)]
    out = mem(levels, torch.zeros(1, 3, dtype=torch.long))
    for a, b in zip(levels, out):
        torch.testing.assert_close(a.features, b.features)


def test_memory_accumulates_across_frames_and_resets():
    torch.manual_seed(0)
    adapter = MemoryAdapter(4)
    b = torch.zeros(3, dtype=torch.long)
    xyz1 = torch.tensor([[0, 0, 0], [1, 0, 0], [2, 0, 0]])
    f1 = torch.rand(3, 4)
    _, st = adapter(b, xyz1, f1, None, 0, -1)
    xyz2 = torch.tensor([[2, 0, 0], [3, 0, 0], [4, 0, 0]])
    f2 = torch.rand(3, 4)
    _, st2 = adapter(b, xyz2, f2, st, 1, -1)
    assert len(st2.coord) == 5  # union of 3 + 3 voxels sharing one
    shared = (st2.coord == torch.tensor([2, 0, 0])).all(1)
    torch.testing.assert_close(st2.feat[shared][0], torch.maximum(f1[2], f2[0]))  # union by max
    adapter.eval()  # a single voxel: BatchNorm needs more than one value in training
    _, st3 = adapter(b[:1], torch.tensor([[9, 9, 9]]), torch.rand(1, 4), st2, 5, 2)  # queue=2 forgets old voxels
    assert len(st3.coord) == 1
    mem = MultilevelMemory(channels=(4, 4, 4, 4))
    mem([_level([[1, 1, 1], [1, 2, 1]], torch.rand(2, 4))] * 4, torch.zeros(1, 3, dtype=torch.long))
    mem.reset()
    assert mem._states == [None] * 4


def test_trained_adapter_mixes_in_memory_from_earlier_frames():
    torch.manual_seed(0)
    adapter = MemoryAdapter(4)
    for p in adapter.parameters():
        torch.nn.init.normal_(p, std=0.3)
    adapter.eval()
    b = torch.zeros(2, dtype=torch.long)
    cur = torch.tensor([[0, 0, 0], [1, 0, 0]])
    f = torch.rand(2, 4)
    alone, _ = adapter(b, cur, f, None, 0, -1)
    _, st = adapter(torch.zeros(1, dtype=torch.long), torch.tensor([[2, 0, 0]]), torch.full((1, 4), 5.0), None, 0, -1)
    with_mem, _ = adapter(b, cur, f, st, 1, -1)
    assert not torch.allclose(alone, with_mem)  # the neighbour seen in an earlier frame changes the output


def test_pooling_normalises_each_superpoint_to_unit_extent():
    xyz = torch.tensor([[0.0, 0, 0], [2.0, 0, 0], [10.0, 10, 10], [10.5, 10, 10]])
    n = GeoAwarePooling.normalize_xyz(xyz, torch.tensor([0, 0, 1, 1]), 2)
    torch.testing.assert_close(n[:, 0], torch.tensor([-1 / 2.01, 1 / 2.01, -0.25 / 0.51, 0.25 / 0.51]))
    feat, centre, w = GeoAwarePooling(8)(xyz, torch.rand(4, 8), torch.tensor([0, 0, 1, 1]), 2)
    assert feat.shape == (2, 8) and torch.allclose(centre[1], torch.tensor([10.25, 10, 10]))
    assert ((w > 0) & (w < 2)).all()
