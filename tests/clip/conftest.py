"""Fixtures of the oseg3d.clip tests: a fake CLIP checkpoint (a random open_clip ViT-B-16, real format)."""
from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="session")
def fake_clip(tmp_path_factory):
    """(path of a ViT-B-16 state dict as fp16 safetensors, the open_clip model holding the same weights).

    fp16 halves the file (300 MB); the model's parameters are rounded the same way so they compare exactly.
    """
    import open_clip
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-16", pretrained=None).eval()
    sd = {k: v.half().contiguous() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for k, v in model.state_dict().items():
            v.copy_(sd[k].to(v.dtype))
    path = tmp_path_factory.mktemp("clip") / "vit_b16.safetensors"
    save_file(sd, str(path))
    return path, model
