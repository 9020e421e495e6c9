"""Gather convs compute what spconv computes: every kind against spconv's Native algorithm on the CPU."""
from __future__ import annotations

import pytest
import spconv.pytorch as sp
import torch
from cumm import tensorview as tv
from spconv.pytorch import SparseConvTensor
from spconv.pytorch.conv import SparseConvolution

from oseg3d.models.gather_conv import GatherConv, down_table, subm_table, use_gather_convs

NATIVE = sp.ConvAlgo.Native


def _tensor(n: int, shape: list[int], batch: int, channels: int, seed: int = 0) -> SparseConvTensor:
    g = torch.Generator().manual_seed(seed)
    keys = torch.randperm(batch * shape[0] * shape[1] * shape[2], generator=g)[:n]
    z, rest = keys % shape[2], keys // shape[2]
    y, rest = rest % shape[1], rest // shape[1]
    x, b = rest % shape[0], rest // shape[0]
    return SparseConvTensor(torch.randn(n, channels, generator=g), torch.stack([b, x, y, z], 1).int(), shape, batch)


def _random_weights(conv):
    torch.nn.init.normal_(conv.weight)
    return conv


@pytest.mark.parametrize("kernel,dilation", [(3, 1), (3, 3), (5, 1)])
def test_subm_matches_spconv(kernel, dilation):
    x = _tensor(700, [16, 14, 12], 2, 4)
    conv = _random_weights(sp.SubMConv3d(4, 8, kernel, dilation=dilation, bias=False, algo=NATIVE))
    torch.testing.assert_close(GatherConv.from_spconv(conv)(x).features, conv(x).features, atol=1e-4, rtol=1e-4)


def test_down_and_inverse_match_spconv():
    x = _tensor(600, [16, 16, 8], 2, 4, seed=1)
    down = _random_weights(sp.SparseConv3d(4, 8, 2, stride=2, bias=False, indice_key="d", algo=NATIVE))
    inv = _random_weights(sp.SparseInverseConv3d(8, 5, 2, bias=False, indice_key="d", algo=NATIVE))
    ref_mid = down(x)
    ref_out = inv(ref_mid)
    got_mid = GatherConv.from_spconv(down)(x)
    # the output cells are the same set, in another order
    row = {tuple(v): i for i, v in enumerate(ref_mid.indices.tolist())}
    perm = torch.tensor([row[tuple(v)] for v in got_mid.indices.tolist()])
    assert len(perm) == len(ref_mid.indices) and got_mid.spatial_shape == list(ref_mid.spatial_shape)
    torch.testing.assert_close(got_mid.features, ref_mid.features[perm], atol=1e-4, rtol=1e-4)
    # the inverse restores the input rows in their order
    got_out = GatherConv.from_spconv(inv)(got_mid.replace_feature(ref_mid.features[perm]))
    assert torch.equal(got_out.indices, x.indices)
    torch.testing.assert_close(got_out.features, ref_out.features, atol=1e-4, rtol=1e-4)


def test_bias_and_relu_are_fused():
    x = _tensor(300, [8, 8, 8], 1, 4)
    conv = _random_weights(sp.SubMConv3d(4, 6, 3, bias=True, algo=NATIVE))
    torch.nn.init.normal_(conv.bias)
    plain = sp.SubMConv3d(4, 6, 3, bias=False, algo=NATIVE)
    plain.weight.data.copy_(conv.weight.data)
    ref = torch.relu(plain(x).features + conv.bias.detach())
    conv.act_type = tv.gemm.Activation.ReLU
    torch.testing.assert_close(GatherConv.from_spconv(conv)(x).features, ref, atol=1e-4, rtol=1e-4)


def test_tables_are_cached_per_key_and_built_without_keys():
    x = _tensor(200, [8, 8, 8], 1, 4)
    keyed = use_gather_convs(torch.nn.Sequential(sp.SubMConv3d(4, 4, 3, indice_key="k", algo=NATIVE),
                                                 sp.SubMConv3d(4, 4, 3, indice_key="k", algo=NATIVE)))
    keyed(x)
    assert [k for k in x.indice_dict if k.startswith("gather/")] == ["gather/subm/k/3/1"]
    free = GatherConv.from_spconv(sp.SubMConv3d(4, 4, 3, algo=NATIVE))
    free(_tensor(200, [8, 8, 8], 1, 4))  # no key: nothing cached, nothing required


def test_tables_on_edge_cases():
    empty = torch.zeros(0, 4, dtype=torch.int32)
    assert subm_table(empty, [4, 4, 4], 3).shape == (0, 27)
    one = torch.tensor([[0, 1, 2, 3]], dtype=torch.int32)
    t = subm_table(one, [4, 4, 4], 3)
    assert t.shape == (1, 27) and int(t[0, 13]) == 0 and int((t == 1).sum()) == 26  # only the centre tap
    out_idx, out_shape, down, up = down_table(one, [4, 4, 4])
    assert out_idx.tolist() == [[0, 0, 1, 1]] and out_shape == [2, 2, 2]
    assert int(down[0, 5]) == 0 and int(up[0, 5]) == 0  # cell (1,2,3) is tap (1,0,1) = 5 of parent (0,1,1)


def test_bad_input_is_refused_with_the_fix():
    with pytest.raises(ValueError, match="even spatial sizes"):
        down_table(torch.tensor([[0, 1, 1, 1]], dtype=torch.int32), [5, 4, 4])
    with pytest.raises(ValueError, match="stride-2"):
        GatherConv.from_spconv(sp.SparseConv3d(4, 4, 3, stride=2))
    inv = GatherConv.from_spconv(sp.SparseInverseConv3d(4, 4, 2, indice_key="nowhere"))
    with pytest.raises(KeyError, match="no down-conv"):
        inv(_tensor(10, [4, 4, 4], 1, 4))


def _grads(conv_fn, x: SparseConvTensor, weight: torch.Tensor, probe: torch.Tensor):
    """(output, d<out, probe>/dx, d<out, probe>/dW) of a conv call."""
    feats = x.features.clone().requires_grad_(True)
    out = conv_fn(x.replace_feature(feats)).features
    (out * probe).sum().backward()
    return out.detach(), feats.grad, weight.grad


@pytest.mark.parametrize("kernel,dilation", [(3, 1), (3, 3), (5, 1)])
def test_subm_gradients_match_spconv(kernel, dilation):
    x = _tensor(500, [12, 12, 10], 2, 4, seed=2)
    conv = _random_weights(sp.SubMConv3d(4, 6, kernel, dilation=dilation, bias=False, algo=NATIVE))
    probe = torch.randn(500, 6, generator=torch.Generator().manual_seed(3))
    ref = _grads(conv, x, conv.weight, probe)
    conv.weight.grad = None
    got = _grads(GatherConv.from_spconv(conv), x, conv.weight, probe)  # shares conv.weight
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_down_and_inverse_gradients_match_spconv():
    x = _tensor(400, [12, 12, 8], 2, 4, seed=4)
    down = _random_weights(sp.SparseConv3d(4, 6, 2, stride=2, bias=False, indice_key="d", algo=NATIVE))
    inv = _random_weights(sp.SparseInverseConv3d(6, 5, 2, bias=False, indice_key="d", algo=NATIVE))
    probe = torch.randn(400, 5, generator=torch.Generator().manual_seed(5))

    def run(d, i):
        feats = x.features.clone().requires_grad_(True)
        out = i(d(x.replace_feature(feats))).features
        (out * probe).sum().backward()
        return out.detach(), feats.grad, down.weight.grad.clone(), inv.weight.grad.clone()

    ref = run(down, inv)
    down.weight.grad = inv.weight.grad = None
    got = run(GatherConv.from_spconv(down), GatherConv.from_spconv(inv))  # the inverse restores x's row order
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_converted_model_keeps_its_state_dict():
    from oseg3d.models.resunet import Res16UNet34C

    net = Res16UNet34C()
    before = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    use_gather_convs(net)
    assert {k: tuple(v.shape) for k, v in net.state_dict().items()} == before
    assert not any(isinstance(m, SparseConvolution) for m in net.modules())


@pytest.mark.parametrize("online", [False, True])
def test_training_gradients_match_spconv(online):
    """Training mode (BatchNorm on batch statistics; memory adapters for MV): the encoder's features and
    every parameter gradient are the same with either engine.

    In float64: in float32 the engines' roundings differ by ~1e-7, enough to flip the odd ReLU sitting
    at zero, which moves single gradient entries by O(1); in float64 they agree to ~1e-14. The decoder
    and the criterion after the encoder are the same code with either engine.
    """
    import copy

    import numpy as np

    from oseg3d.models.batch import PointBatch
    from oseg3d.models.build import ModelConfig, build_model

    from ._synth import make_batch, make_frame, random_pose

    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    ref = build_model(ModelConfig(online=online, sparse_engine="spconv")).train().double()
    if online:  # non-zero adapters (fresh ones are the identity)
        g = torch.Generator().manual_seed(0)
        for p in ref.memory.parameters():
            if p.dim() > 1:
                p.data.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.05)
    gather = use_gather_convs(copy.deepcopy(ref))
    pose = random_pose(rng)
    frames = [make_frame(rng, 600, pose=pose) for _ in range(3)]

    def batch(fs):
        b = PointBatch.from_dict(make_batch(fs))
        b.feat, b.coord = b.feat.double(), b.coord.double()
        return b

    def step(model):
        batches = [batch([f]) for f in frames] if online else [batch(frames)]
        if online:
            model.memory.reset()
        total = 0
        for b in batches:
            f = model.voxel_features(b, b.coord, use_memory=online)[1]
            total = total + (f * torch.randn(f.shape, generator=torch.Generator().manual_seed(7), dtype=f.dtype)).sum()
        model.zero_grad()
        total.backward()
        return total.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    (ref_l, ref_g), (got_l, got_g) = step(ref), step(gather)
    torch.testing.assert_close(got_l, ref_l, atol=1e-9, rtol=1e-10)
    assert ref_g.keys() == got_g.keys() and len(ref_g) > 100
    for n in ref_g:
        torch.testing.assert_close(got_g[n], ref_g[n], atol=1e-10 * (1 + float(ref_g[n].abs().max())), rtol=1e-9,
                                   msg=n)
