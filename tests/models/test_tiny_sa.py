"""Tiny-SA neck: Z-order serialization, per-frame patches, no leaks across frames, identity at init, ESAM ❷."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from spconv.pytorch import SparseConvTensor

from oseg3d.engine.weights import partial_load
from oseg3d.models.batch import PointBatch
from oseg3d.models.build import ModelConfig, build_model, count_parameters
from oseg3d.models.tiny_sa import TinySA, morton_code, patch_layout, serialize

from ._synth import make_batch, make_frame


def _sparse(counts, grid=24, channels=96, seed=0) -> SparseConvTensor:
    """Frames of `counts` distinct random voxels each, frames listed in a shuffled order."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for b, n in enumerate(counts):
        cells = torch.randperm(grid ** 3, generator=g)[:n]
        xyz = torch.stack([cells // grid ** 2, cells // grid % grid, cells % grid], 1)
        rows.append(torch.cat([torch.full((n, 1), b), xyz], 1))
    idx = torch.cat(rows)[torch.randperm(sum(counts), generator=g)].int()
    return SparseConvTensor(torch.randn(len(idx), channels, generator=g), idx, [grid] * 3, len(counts))


def _trained_like(neck: TinySA, std: float = 0.1) -> TinySA:
    """Non-zero output projections, so every path of a block is exercised."""
    torch.manual_seed(1)
    for blk in neck.blocks:
        for lin in (blk.proj, blk.mlp[2]):
            torch.nn.init.normal_(lin.weight, std=std)
    return neck


def test_morton_code_interleaves_x_y_z_bits():
    xyz = torch.tensor([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 1], [2, 0, 0], [3, 5, 6]])
    # bit i of x → bit 3i+2, of y → 3i+1, of z → 3i; (3, 5, 6) = x 011, y 101, z 110 → (xyz per bit,
    # high to low) 011 101 110
    assert morton_code(xyz).tolist() == [4, 2, 1, 7, 32, 0b011_101_110]
    assert morton_code(torch.tensor([[65535, 65535, 65535]])).item() == 2 ** 48 - 1


def test_serialization_is_a_per_frame_permutation():
    x = _sparse([50, 7, 120])
    order = serialize(x.indices)
    assert torch.equal(order.sort().values, torch.arange(len(order)))
    frame = x.indices[order, 0]
    assert (frame[1:] >= frame[:-1]).all()  # frames never interleave
    code = morton_code(x.indices[order, 1:])
    same = frame[1:] == frame[:-1]
    assert (code[1:][same] > code[:-1][same]).all()  # Z-order inside each frame


def test_patch_layout_pads_each_frame_on_its_own():
    idx = torch.tensor([[0, i, 0, 0] for i in range(5)] + [[2, i, 0, 0] for i in range(9)], dtype=torch.int32)
    order = serialize(idx)
    lay = patch_layout(idx, order, 3, patch_size=4, shift=0)
    # frame 0: 5 voxels → 2 patches (slots 0-7); frame 1: none; frame 2: 9 voxels → 3 patches (slots 8-19)
    assert lay.slot.tolist() == [0, 1, 2, 3, 4] + list(range(8, 17))
    assert lay.key_mask.view(-1).sum() == 14 and lay.num_patches == 5
    shifted = patch_layout(idx, order, 3, patch_size=4, shift=2)
    # frame 0: 2 + 5 → 2 patches, voxels at slots 2-6; frame 2: 2 + 9 → 3 patches, slots 10-18
    assert shifted.slot.tolist() == [2, 3, 4, 5, 6] + list(range(10, 19))
    assert shifted.key_mask.view(5, 4).any(1).all()  # no patch is all padding
    patch_frame = torch.full((5,), -1)
    patch_frame[shifted.slot // 4] = idx[:, 0].long()
    assert patch_frame.tolist() == [0, 0, 2, 2, 2]


def test_neck_forward_backward_and_identity_at_init():
    x = _sparse([300, 130])
    neck = TinySA(96, patch_size=32)
    feats = x.features.clone().requires_grad_(True)
    out = neck(x.replace_feature(feats))
    assert out.features.shape == (430, 96) and torch.equal(out.features, feats)  # zero-initialised outputs
    out.features.square().sum().backward()
    assert neck.blocks[0].proj.weight.grad.abs().sum() > 0  # the zero-initialised layers learn first
    neck = _trained_like(neck)
    neck.zero_grad()
    out = neck(x.replace_feature(feats))
    out.features.square().sum().backward()
    for name, p in neck.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name  # qkv, pos_embed, norms all reached


def test_recompute_gives_the_same_outputs_and_gradients():
    x = _sparse([200, 90, 40])
    neck = _trained_like(TinySA(96, patch_size=16))
    results = []
    for recompute in (True, False):
        neck.recompute = recompute
        neck.zero_grad()
        feats = x.features.clone().requires_grad_(True)
        out = neck(x.replace_feature(feats)).features
        out.square().sum().backward()
        results.append((out.detach(), feats.grad, neck.blocks[1].pos_embed[0].weight.grad.clone()))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("train", [False, True])
def test_frames_and_padding_do_not_leak(train):
    neck = _trained_like(TinySA(96, patch_size=32)).train(train)
    x = _sparse([77, 150])  # neither a multiple of 32: both frames end in padded patches
    first = x.indices[:, 0] == 0
    alone = SparseConvTensor(x.features[first], x.indices[first], x.spatial_shape, 1)
    together = neck(x).features[first]
    torch.testing.assert_close(together, neck(alone).features, rtol=1e-5, atol=1e-5)
    noisy = x.replace_feature(torch.where(first[:, None], x.features, 100 * torch.randn_like(x.features)))
    torch.testing.assert_close(neck(noisy).features[first], together, rtol=1e-5, atol=1e-5)


def test_esam_tiny_sa_sv_loss_backward_and_route1_start():
    rng = np.random.default_rng(0)
    batch = PointBatch.from_dict(make_batch([make_frame(rng, 600), make_frame(rng, 500)]))
    torch.manual_seed(0)
    route1 = build_model(ModelConfig()).eval()
    model = build_model(ModelConfig(neck="tiny_sa"))
    counts = count_parameters(model)
    assert counts["backbone"] == count_parameters(route1)["backbone"] and 0.1e6 < counts["neck"] < 0.2e6
    report = partial_load(model, route1.state_dict(), {})  # ❶ → ❷ with the same names
    assert all(k.startswith("neck.") for k in report.missing) and not report.unexpected
    with torch.no_grad():  # an untrained neck is the identity: ❷ starts as the ❶ function
        torch.testing.assert_close(model.eval().extract(batch).point_feats, route1.extract(batch).point_feats)
    losses = model.train().loss_sv(batch)
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    assert model.neck.blocks[1].mlp[2].weight.grad.abs().sum() > 0
