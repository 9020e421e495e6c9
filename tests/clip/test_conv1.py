"""ClipConv1: the contract the Bi-Fusion encoder relies on, and checkpoint loading without unpickling."""
from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torchvision.transforms import Normalize

from oseg3d.clip.conv1 import (CONV1_SHAPE, OPENAI_MEAN, OPENAI_STD, RANDOM_INIT_SOURCE, load_clip_conv1,
                               pix_and_global)
from oseg3d.errors import ConfigError, DataError


def _images(b=2, h=480, w=640, seed=0):
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (b, 3, h, w), dtype=np.uint8))


def test_normalisation_constants_are_open_clips():
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

    assert OPENAI_MEAN == tuple(OPENAI_DATASET_MEAN) and OPENAI_STD == tuple(OPENAI_DATASET_STD)


def test_shapes_dtypes_and_frozen():
    m, _ = load_clip_conv1(None, allow_random_init=True)
    img = _images()
    f = m(img)
    assert f.shape == (2, 768, 30, 40) and f.dtype == torch.float32
    assert torch.equal(f, m(img.float()))  # uint8 and float 0..255 are the same input
    assert not any(p.requires_grad for p in m.parameters())
    pix, glob = pix_and_global(f)
    assert pix.shape == (2, 192, 60, 80) and glob.shape == (2, 768)
    # pixel_shuffle: channel 4c + 2a + b of cell (i, j) lands on pixel (2i + a, 2j + b) of channel c
    c, a, b, i, j = 5, 1, 0, 3, 7
    assert pix[0, c, 2 * i + a, 2 * j + b] == f[0, 4 * c + 2 * a + b, i, j]
    torch.testing.assert_close(glob, f.mean((2, 3)))


def test_output_is_float32_under_autocast():
    m, _ = load_clip_conv1(None, allow_random_init=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        f = m(_images(1, 64, 64))
    assert f.dtype == torch.float32
    torch.testing.assert_close(f, m(_images(1, 64, 64)))


def test_matches_open_clip_conv1_on_a_normalised_image(fake_clip):
    path, model = fake_clip
    m, source = load_clip_conv1(str(path))
    assert source.startswith(f"openai ViT-B/16 from {path} (sha256 ") and len(source.rsplit(" ", 1)[1]) == 13
    img = _images(2, 224, 224, seed=1)
    ref = model.visual.conv1(Normalize(OPENAI_MEAN, OPENAI_STD)(img.float() / 255))
    torch.testing.assert_close(m(img), ref, rtol=1e-5, atol=1e-5)
    assert m.conv1.weight.shape == CONV1_SHAPE and m.conv1.weight.dtype == torch.float32


def test_weights_only_state_dict_with_wrapper(fake_clip, tmp_path):
    path, model = fake_clip
    pt = tmp_path / "vit.pt"
    torch.save({"state_dict": {f"module.{k}": v.half() for k, v in model.state_dict().items()}}, pt)
    m, _ = load_clip_conv1(str(pt))
    torch.testing.assert_close(m.conv1.weight, model.visual.conv1.weight, rtol=0, atol=0)


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit is deprecated, but OpenAI's file is TorchScript
def test_torchscript_archive_is_refused_with_a_conversion_fix(tmp_path):
    pt = tmp_path / "ViT-B-16.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(pt))
    with pytest.raises(ConfigError, match="TorchScript") as e:
        load_clip_conv1(str(pt))
    assert "safetensors.torch.save_file" in e.value.fix


class _Evil:
    def __reduce__(self):
        return (print, ("unpickled!",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_arbitrary_pickles_are_not_unpickled(tmp_path):
    pt = tmp_path / "evil.bin"
    with open(pt, "wb") as f:
        pickle.dump({"x": _Evil()}, f)
    with pytest.raises(DataError, match="weights-only"):
        load_clip_conv1(str(pt))


def test_garbage_and_wrong_state_dicts_are_data_errors(tmp_path):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 100)
    with pytest.raises(DataError, match="safetensors"):
        load_clip_conv1(str(junk))
    only_conv = tmp_path / "conv.safetensors"
    save_file({"visual.conv1.weight": torch.zeros(CONV1_SHAPE)}, str(only_conv))
    with pytest.raises(DataError, match="not an open_clip ViT-B-16 state dict"):
        load_clip_conv1(str(only_conv))


def test_no_weights_needs_the_flag_and_random_init_is_deterministic(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_clip_conv1(None)
    assert "--weights" in str(e.value) and "--random-init" in e.value.fix
    with pytest.raises(ConfigError, match="not found"):
        load_clip_conv1(str(tmp_path / "missing.safetensors"))
    (a, src), (b, _) = load_clip_conv1("", allow_random_init=True), load_clip_conv1(None, allow_random_init=True)
    assert src == RANDOM_INIT_SOURCE
    assert torch.equal(a.conv1.weight, b.conv1.weight)


def test_pix_and_global_of_a_hand_made_map():
    f = torch.arange(2 * 768 * 1 * 1, dtype=torch.float32).view(2, 768, 1, 1)
    pix, glob = pix_and_global(f)
    assert torch.equal(pix, F.pixel_shuffle(f, 2)) and pix.shape == (2, 192, 2, 2)
    assert torch.equal(pix[1, 0].flatten(), torch.tensor([768.0, 769.0, 770.0, 771.0]))
    assert torch.equal(glob, f[:, :, 0, 0])
