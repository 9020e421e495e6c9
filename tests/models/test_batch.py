"""PointBatch's optional CLIP fields, and a voxel grid that loses no voxel at the U-Net's down-convs."""
from __future__ import annotations

import spconv.pytorch as spconv
import torch
from spconv.pytorch import SparseConvTensor

from oseg3d.models.batch import GRID_ALIGN, PointBatch, voxelize
from oseg3d.models.sparse import ConvAlgo, set_conv_algo


def test_clip_fields_default_to_none_and_travel_with_the_batch():
    d = {"coord": torch.zeros(4, 3), "feat": torch.zeros(4, 3), "offset": torch.tensor([2, 4]),
         "superpoint": torch.zeros(4, dtype=torch.long)}
    b = PointBatch.from_dict(d)
    assert b.clip_pix is b.clip_global is b.clip_valid is b.image is None
    b = PointBatch.from_dict({**d, "clip_pix": torch.zeros(2, 192, 60, 80, dtype=torch.float16),
                              "clip_valid": torch.tensor([True, False]),
                              "image": torch.zeros(2, 3, 480, 640, dtype=torch.uint8)})
    moved = b.to("cpu")
    assert moved.clip_pix.dtype == torch.float16 and moved.image.dtype == torch.uint8 and moved.clip_global is None


def test_voxel_grid_keeps_edge_voxels_at_every_level():
    coord = torch.tensor([[0.0, 0.0, 0.0], [0.725, 0.0, 0.0]])  # cells 0 and 36 along x
    vox = voxelize(coord, coord, torch.zeros(2, dtype=torch.long), 1)
    assert all(s % GRID_ALIGN == 0 for s in vox.spatial_shape)
    x = SparseConvTensor(vox.features, vox.indices, vox.spatial_shape, 1)
    for level in range(4):  # four stride-2 convs as in Res16UNet34C: cell 36 survives as 18, 9, 4, 2
        conv = spconv.SparseConv3d(3, 3, 2, stride=2, bias=False, indice_key=f"d{level}")
        set_conv_algo(conv, ConvAlgo.Native)
        x = conv(x)
        assert sorted(x.indices[:, 1].tolist()) == [0, 36 >> (level + 1)]
