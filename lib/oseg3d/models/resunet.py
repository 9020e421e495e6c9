"""Res16UNet34C on spconv 2.x: the 3D backbone of ESAM (37.85 M parameters).

MinkowskiEngine's Res16UNet34C (reference/esam.md §3.2): 5³ stem (3→32), four stride-2 2³ downsamplings
each followed by BasicBlocks (PLANES 32, 64, 128, 256; LAYERS 2, 3, 4, 6), then four 2³ upsamplings, each
concatenated with the skip of the same resolution and followed by BasicBlocks (PLANES 256, 128, 96, 96;
LAYERS 2 each). No final 1×1 conv: the output is 96 channels at stride 1.

spconv specifics: submanifold 3³ convs at one resolution share an `indice_key` (index pairs built once
per level), upsampling is `SparseInverseConv3d` reusing the key of the matching down-conv (never
SparseConvTranspose3d: slow, spconv #18), and the conv algorithm follows the input's device.
"""
from __future__ import annotations

import spconv.pytorch as spconv
import torch
from spconv.pytorch import SparseConvTensor
from torch import nn

from oseg3d.models.sparse import SparseBNReLU, algo_for, fp16_region, set_conv_algo

__all__ = ["Res16UNet34C", "BasicBlock", "PLANES", "LAYERS"]

PLANES = (32, 64, 128, 256, 256, 128, 96, 96)
LAYERS = (2, 3, 4, 6, 2, 2, 2, 2)
INIT_DIM = 32


class BasicBlock(nn.Module):
    """conv3-BN-ReLU-conv3-BN + (1×1 conv-BN projected) identity, ReLU."""

    def __init__(self, cin: int, cout: int, key: str, bn_momentum: float = 0.02):
        super().__init__()
        self.conv1 = spconv.SubMConv3d(cin, cout, 3, bias=False, indice_key=key)
        self.bn1 = SparseBNReLU(cout, True, bn_momentum)
        self.conv2 = spconv.SubMConv3d(cout, cout, 3, bias=False, indice_key=key)
        self.bn2 = SparseBNReLU(cout, False, bn_momentum)
        self.down = None
        if cin != cout:
            self.down = nn.Sequential(nn.Linear(cin, cout, bias=False), nn.BatchNorm1d(cout, momentum=bn_momentum))

    def forward(self, x: SparseConvTensor) -> SparseConvTensor:
        identity = x.features if self.down is None else self.down(x.features)
        out = self.bn2(self.conv2(self.bn1(self.conv1(x))))
        return out.replace_feature(torch.relu(out.features + identity))


def _stage(cin: int, cout: int, blocks: int, key: str, m: float) -> nn.Sequential:
    return nn.Sequential(*[BasicBlock(cin if i == 0 else cout, cout, key, m) for i in range(blocks)])


class Res16UNet34C(nn.Module):
    """The U-Net. `forward` returns the stride-1 96-channel voxel features; `encode`/`decode` expose the
    four encoder outputs so the MV memory adapters can act on them between the two halves."""

    def __init__(self, in_channels: int = 3, bn_momentum: float = 0.02):
        super().__init__()
        m = bn_momentum
        self.stem = spconv.SubMConv3d(in_channels, INIT_DIM, 5, bias=False, indice_key="stem")
        self.stem_bn = SparseBNReLU(INIT_DIM, True, m)
        self.downs, self.down_bns, self.enc = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        cin = INIT_DIM
        for lvl in range(4):
            self.downs.append(spconv.SparseConv3d(cin, cin, 2, stride=2, bias=False, indice_key=f"down{lvl + 1}"))
            self.down_bns.append(SparseBNReLU(cin, True, m))
            self.enc.append(_stage(cin, PLANES[lvl], LAYERS[lvl], f"subm{2 ** (lvl + 1)}", m))
            cin = PLANES[lvl]
        skips = (PLANES[2], PLANES[1], PLANES[0], INIT_DIM)
        self.ups, self.up_bns, self.dec = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        for i in range(4):
            lvl = 4 - i  # down-conv key whose indices we restore
            cout = PLANES[4 + i]
            self.ups.append(spconv.SparseInverseConv3d(cin, cout, 2, bias=False, indice_key=f"down{lvl}"))
            self.up_bns.append(SparseBNReLU(cout, True, m))
            self.dec.append(_stage(cout + skips[i], cout, LAYERS[4 + i], f"subm{2 ** (lvl - 1)}" if lvl > 1 else "subm1", m))
            cin = cout
        self.out_channels = PLANES[-1]
        self._algo_device = None

    def _sync_algo(self, device: torch.device) -> None:
        if self._algo_device != device.type:
            set_conv_algo(self, algo_for(device))
            self._algo_device = device.type

    def encode(self, x: SparseConvTensor) -> tuple[SparseConvTensor, list[SparseConvTensor]]:
        """Stem + encoder. Returns (stem output, [stride 2, 4, 8, 16 outputs])."""
        self._sync_algo(x.features.device)
        x = x.replace_feature(x.features.to(self.stem.weight.dtype))  # fp16 weights at inference: fp16 in
        with fp16_region(self):
            stem = self.stem_bn(self.stem(x))
            feats, out = [], stem
            for down, bn, stage in zip(self.downs, self.down_bns, self.enc):
                out = stage(bn(down(out)))
                feats.append(out)
        return stem, feats

    def decode(self, stem: SparseConvTensor, feats: list[SparseConvTensor]) -> SparseConvTensor:
        """Decoder over (possibly memory-adapted) encoder outputs → stride-1 features."""
        skips = [feats[2], feats[1], feats[0], stem]
        out = feats[3]
        with fp16_region(self):
            for up, bn, stage, skip in zip(self.ups, self.up_bns, self.dec, skips):
                out = bn(up(out))
                out = stage(out.replace_feature(torch.cat([out.features, skip.features], 1)))
        return out

    def forward(self, x: SparseConvTensor) -> SparseConvTensor:
        stem, feats = self.encode(x)
        return self.decode(stem, feats)
