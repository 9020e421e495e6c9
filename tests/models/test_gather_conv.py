"""Gather convs compute what spconv computes: every kind against spconv's Native algorithm on the CPU."""
from __future__ import annotations

import pytest
import spconv.pytorch as sp
import torch
from cumm import tensorview as tv
from spconv.pytorch import SparseConvTensor

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
    out_idx, out_shape, down, up = down_table(one, [4, 4, 4], 1)
    assert out_idx.tolist() == [[0, 0, 1, 1]] and out_shape == [2, 2, 2]
    assert int(down[0, 5]) == 0 and int(up[0, 5]) == 0  # cell (1,2,3) is tap (1,0,1) = 5 of parent (0,1,1)


def test_bad_input_is_refused_with_the_fix():
    with pytest.raises(ValueError, match="even spatial sizes"):
        down_table(torch.tensor([[0, 1, 1, 1]], dtype=torch.int32), [5, 4, 4], 1)
    with pytest.raises(ValueError, match="stride-2"):
        GatherConv.from_spconv(sp.SparseConv3d(4, 4, 3, stride=2))
    inv = GatherConv.from_spconv(sp.SparseInverseConv3d(4, 4, 2, indice_key="nowhere"))
    with pytest.raises(KeyError, match="no down-conv"):
        inv(_tensor(10, [4, 4, 4], 1, 4))
