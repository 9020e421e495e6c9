"""Res16UNet34C on spconv: sizes, a sparse block against a dense nn.Conv3d reference, index alignment."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from spconv.pytorch import SparseConvTensor

from oseg3d.models.batch import voxelize
from oseg3d.models.resunet import BasicBlock, Res16UNet34C
from oseg3d.models.sparse import ConvAlgo, set_conv_algo


def test_parameter_count_matches_esam():
    n = sum(p.numel() for p in Res16UNet34C().parameters())
    assert abs(n - 37.85e6) / 37.85e6 < 0.005, n


def _random_sparse(grid=8, channels=3, density=0.35, seed=0):
    g = torch.Generator().manual_seed(seed)
    occ = torch.rand(grid, grid, grid, generator=g) < density
    idx = torch.nonzero(occ)
    feats = torch.randn(len(idx), channels, generator=g)
    x = SparseConvTensor(feats, torch.cat([torch.zeros(len(idx), 1, dtype=torch.long), idx], 1).int(), [grid] * 3, 1)
    dense = torch.zeros(1, channels, grid, grid, grid)
    dense[0, :, idx[:, 0], idx[:, 1], idx[:, 2]] = feats.T
    return x, dense, idx, occ


def _dense_conv(conv, dense, occ):
    w = conv.weight.permute(0, 4, 1, 2, 3)  # spconv KRSC (out, kx, ky, kz, in) → (out, in, kx, ky, kz)
    return F.conv3d(dense, w, padding=1) * occ  # submanifold: outputs only at active sites


def test_sparse_block_matches_dense_conv3d_reference():
    torch.manual_seed(0)
    block = BasicBlock(3, 8, key="t").eval()
    set_conv_algo(block, ConvAlgo.Native)
    for bn in (block.bn1.bn, block.bn2.bn, block.down[1]):
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.data.uniform_(0.5, 1.5)
        bn.bias.data.uniform_(-0.2, 0.2)
    x, dense, idx, occ = _random_sparse()
    with torch.no_grad():
        out = block(x)
        bn = lambda m, t: F.batch_norm(t, m.running_mean, m.running_var, m.weight, m.bias, False)  # noqa: E731
        y = torch.relu(bn(block.bn1.bn, _dense_conv(block.conv1, dense, occ))) * occ
        y = bn(block.bn2.bn, _dense_conv(block.conv2, y, occ))
        ident = block.down[0].weight @ dense[0].reshape(3, -1)
        ident = bn(block.down[1], ident.reshape(1, 8, *dense.shape[2:]))
        ref = torch.relu(y + ident) * occ
    got = torch.zeros_like(ref)
    oi = out.indices.long()
    got[0, :, oi[:, 1], oi[:, 2], oi[:, 3]] = out.features.T
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)


def test_unet_output_aligns_with_input_voxels_and_is_finite():
    torch.manual_seed(0)
    coord = torch.rand(3000, 3) * torch.tensor([2.0, 2.0, 1.0])
    feat = torch.randn(3000, 3)
    b = torch.cat([torch.zeros(1500), torch.ones(1500)]).long()
    vox = voxelize(coord, feat, b, 2)
    net = Res16UNet34C()
    out = net(SparseConvTensor(vox.features, vox.indices, vox.spatial_shape, 2))
    assert out.features.shape == (len(vox.indices), 96)
    assert torch.equal(out.indices, vox.indices)  # inverse convs restore the input's voxel order
    assert torch.isfinite(out.features).all()


def test_voxelize_averages_features_and_aligns_origins():
    coord = torch.tensor([[0.001, 0.001, 0.001], [0.015, 0.002, 0.0], [0.5, 0.5, 0.5], [-0.33, 0.1, 0.2]])
    feat = torch.tensor([[1.0], [3.0], [5.0], [7.0]])
    vox = voxelize(coord, feat, torch.tensor([0, 0, 0, 1]), 2)
    assert len(vox.indices) == 3  # the first two points share a 2 cm cell
    assert (vox.origin % 16 == 0).all() and (vox.indices[:, 1:] >= 0).all()
    assert vox.point2voxel[0] == vox.point2voxel[1]
    assert vox.features[vox.point2voxel[0], 0] == 2.0
    # absolute cell = local index + origin
    absolute = vox.indices[vox.point2voxel[3], 1:].long() + vox.origin[1]
    assert absolute.tolist() == torch.floor(coord[3] / 0.02).long().tolist()
