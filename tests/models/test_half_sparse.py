"""`half_sparse_for_inference`: every route's sparse weights go to fp16, the dense parts stay fp32."""
from __future__ import annotations

import pytest
import torch
from spconv.pytorch.conv import SparseConvolution

from oseg3d.models.build import ModelConfig, build_model
from oseg3d.models.gather_conv import GatherConv
from oseg3d.models.sparse import half_sparse_for_inference


def _sparse_dtypes(module: torch.nn.Module) -> set[torch.dtype]:
    return {p.dtype for m in module.modules() if isinstance(m, (SparseConvolution, GatherConv)) for p in m.parameters()}


@pytest.mark.parametrize("route", ["3d", "3dtsa", "bifusion"])
def test_every_sparse_weight_is_halved(route):
    kw = {"3d": {}, "3dtsa": {"neck": "tiny_sa"},
          "bifusion": {"neck": "tiny_sa", "encoder": "bifusion", "clip_random_init": True}}[route]
    model = build_model(ModelConfig(online=True, **kw)).eval()
    assert _sparse_dtypes(model) == {torch.float32}
    assert half_sparse_for_inference(model) is model
    assert _sparse_dtypes(model) == {torch.float16}  # U-Net (wherever it sits) and memory adapters
    assert {p.dtype for p in model.memory.parameters()} == {torch.float16}
    assert {p.dtype for p in model.decoder.parameters()} == {torch.float32}
    if route == "bifusion":
        bi = model.bi_encoder
        assert {p.dtype for p in bi.backbone3d.parameters()} == {torch.float16}
        assert {p.dtype for p in bi.backbone3d.buffers() if p.is_floating_point()} == {torch.float16}  # BN stats
        dense = [bi.conv_reduce, bi.to_3d, bi.refine_2d, bi.film, bi.neck, bi.clip2d]
        assert {p.dtype for d in dense for p in d.parameters()} == {torch.float32}
    if route == "3dtsa":
        assert {p.dtype for p in model.neck.parameters()} == {torch.float32}  # dense attention, autocast's
