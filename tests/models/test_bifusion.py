"""Bi-Fusion encoder: projection with a hand-made camera, sampling and splatting, augmentation, the
offline / online 2D paths, the fallback counter, the frozen 2D branch, and ESAM ❸ SV / MV steps."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from oseg3d.clip.conv1 import load_clip_conv1, pix_and_global
from oseg3d.configs import load_config
from oseg3d.data.transforms import Compose, GlobalRotScaleTrans, RandomFlip
from oseg3d.engine.optim import param_groups
from oseg3d.engine.weights import partial_load
from oseg3d.errors import DataError
from oseg3d.models.batch import PointBatch
from oseg3d.models.bifusion import project_points, sample_map, splat_to_map
from oseg3d.models.build import ModelConfig, build_model, count_parameters
from oseg3d.models.esam import _select_frame

from ._synth import make_batch, make_frame, random_pose

FX, FY, CX, CY = 577.870605, 577.870605, 319.5, 239.5


@pytest.fixture(scope="module")
def clip():
    return load_clip_conv1(None, allow_random_init=True)[0]


def _bifusion(**kw):
    torch.manual_seed(0)
    return build_model(ModelConfig(neck="tiny_sa", encoder="bifusion", clip_random_init=True, **kw))


def _world(pose: np.ndarray, cam: list[list[float]]) -> torch.Tensor:
    cam = np.asarray(cam, np.float64)
    return torch.from_numpy(cam @ pose[:3, :3].T + pose[:3, 3]).float()


def test_projection_with_a_hand_made_camera():
    pose = random_pose(np.random.default_rng(3))
    # optical axis; behind the camera; a point at pixel (10, 470); one left of the image
    cam = [[0, 0, 2.0], [0, 0, -1.0], [(10 - CX) * 3 / FX, (470 - CY) * 3 / FY, 3.0], [-2.0, 0, 1.0]]
    frame = torch.zeros(4, dtype=torch.long)
    uv, valid = project_points(_world(pose, cam), frame, torch.from_numpy(pose).float()[None])
    torch.testing.assert_close(uv[0], torch.tensor([CX, CY]), atol=1e-3, rtol=0)
    torch.testing.assert_close(uv[2], torch.tensor([10.0, 470.0]), atol=1e-3, rtol=0)
    assert valid.tolist() == [True, False, True, False]


def test_sampling_hits_pixel_centres_and_keeps_frames_apart():
    fmap = torch.randn(2, 5, 60, 80, generator=torch.Generator().manual_seed(0))
    uv = torch.tensor([[CX, CY], [3.5, 3.5], [3.5, -0.5], [CX, CY]])  # 3.5 = centre of map pixel 0
    frame = torch.tensor([0, 0, 1, 1])
    out = sample_map(fmap, uv, frame, torch.tensor([True, True, True, False]))
    close = dict(atol=1e-4, rtol=0)  # grid_sample's normalised coordinates round at ~1e-5 of a pixel
    # the optical axis falls between the four centre pixels of the 60×80 map: their mean
    torch.testing.assert_close(out[0], fmap[0, :, 29:31, 39:41].mean((1, 2)), **close)
    torch.testing.assert_close(out[1], fmap[0, :, 0, 0], **close)
    torch.testing.assert_close(out[2], fmap[1, :, 0, 0], **close)  # top edge of frame 1: no rows of frame 0
    assert out[3].abs().sum() == 0  # not valid → zero


def test_splat_is_a_mean_per_cell_and_frame():
    feat = torch.tensor([[1.0], [3.0], [5.0], [7.0]])
    uv = torch.tensor([[3.5, 3.5], [4.0, 2.0], [3.5, 3.5], [600.0, 400.0]])
    grid = splat_to_map(feat, uv, torch.tensor([0, 0, 1, 1]), torch.tensor([True, True, True, False]), 2, (60, 80))
    assert grid[0, 0, 0, 0] == 2.0 and grid[1, 0, 0, 0] == 5.0 and grid.sum() == 7.0


def test_augmentation_keeps_the_projection():
    rng = np.random.default_rng(0)
    frame = make_frame(rng, 300)
    augment = Compose([RandomFlip(1.0, 0.0), GlobalRotScaleTrans()])  # a reflection, then a similarity
    aug = augment(frame, np.random.default_rng(1))
    assert not np.allclose(aug["coord"], frame["coord"])
    zeros = torch.zeros(300, dtype=torch.long)
    before = project_points(torch.from_numpy(frame["coord"]), zeros, torch.from_numpy(frame["pose"])[None])
    after = project_points(torch.from_numpy(aug["coord"]), zeros, torch.from_numpy(aug["pose"])[None])
    torch.testing.assert_close(after[0], before[0], atol=2e-3, rtol=0)  # pixels
    assert before[1].all() and torch.equal(after[1], before[1])  # back-projected points are all in view


def test_offline_fp16_features_match_the_online_path(clip):
    """Seed §7.7's check, as relative L2: ‖a − b‖₂ / ‖b‖₂ < 1e-3 over the reduced (256, 60, 80) maps."""
    enc = _bifusion().bi_encoder
    image = torch.randint(0, 256, (2, 3, 480, 640), dtype=torch.uint8)
    with torch.no_grad():
        pix, glob = pix_and_global(clip(image))
        online = enc.conv_reduce(pix)
        offline = enc.conv_reduce(pix.half().float())
    assert ((online - offline).norm() / online.norm()).item() < 1e-3
    # through the encoder: frame 0 precomputed (fp16), frame 1 computed from its image
    frames = [make_frame(np.random.default_rng(i), 50) for i in range(2)]
    b = PointBatch.from_dict(make_batch(frames, [True, False], clip))
    b.image[1] = image[1]
    b.clip_pix[0], b.clip_global[0] = pix[0].half(), glob[0].half()
    got_pix, got_glob = enc.clip_features(b)
    torch.testing.assert_close(got_pix[1], pix[1])
    torch.testing.assert_close(got_glob[1], glob[1])
    torch.testing.assert_close(got_pix[0], pix[0], atol=2e-2, rtol=2e-3)


def test_fallback_counter_and_missing_inputs(clip):
    enc = _bifusion().bi_encoder
    frames = [make_frame(np.random.default_rng(i), 50) for i in range(3)]
    enc.clip_features(PointBatch.from_dict(make_batch(frames, [True, True, True], clip)))
    assert enc.fallback_frames == 0
    enc.clip_features(PointBatch.from_dict(make_batch(frames, [False, True, False], clip)))
    assert enc.fallback_frames == 2
    with pytest.raises(DataError, match="clip_features=true"):
        enc.clip_features(PointBatch.from_dict(make_batch(frames)))  # no features, no images


def test_frozen_2d_branch_sv_step_and_state_dict(clip):
    rng = np.random.default_rng(0)
    batch = PointBatch.from_dict(make_batch([make_frame(rng, 500), make_frame(rng, 400)], [True, False], clip))
    model = _bifusion().train()
    enc = model.bi_encoder
    assert not enc.clip2d.training and not any(p.requires_grad for p in enc.clip2d.parameters())
    losses = model.loss_sv(batch)
    total = sum(losses.values())
    assert torch.isfinite(total) and enc.fallback_frames == 1
    total.backward()
    assert enc.clip2d.conv1.weight.grad is None
    for lin in (enc.to_3d[0], enc.film):  # zero-initialised links learn from the first step
        assert lin.weight.grad.abs().sum() > 0
    grouped = {id(p) for g in param_groups(model, 0.01, ["pos_embed", "norm", "bn", "bias"]) for p in g["params"]}
    assert id(enc.clip2d.conv1.weight) not in grouped
    assert grouped == {id(p) for p in model.parameters() if p.requires_grad}
    counts = count_parameters(model)
    assert counts["clip2d"] == 768 * 3 * 16 * 16 and counts["trainable"] == counts["total"] - counts["clip2d"]
    state = model.state_dict()  # the frozen conv1 comes from model.clip_weights, never from checkpoints
    assert not any(".clip2d." in k for k in state) and model.clip_source.startswith("random-init")
    model.load_state_dict(state)  # strict: the missing clip2d keys are expected


def test_route2_weights_start_route3_at_the_route2_function(clip):
    rng = np.random.default_rng(1)
    batch = PointBatch.from_dict(make_batch([make_frame(rng, 500)], [True], clip))
    torch.manual_seed(0)
    route2 = build_model(ModelConfig(neck="tiny_sa")).eval()
    model = _bifusion().eval()
    mapping = load_config("ESAM_sv_bifusion_scannet").init.mapping  # the ❷ → ❸ mapping the config documents
    report = partial_load(model, route2.state_dict(), mapping)
    assert not report.shape_mismatch and any(k.startswith("bi_encoder.neck.") for k in report.loaded)
    model.decoder.load_state_dict(route2.decoder.state_dict())
    model.pooling.load_state_dict(route2.pooling.state_dict())
    with torch.no_grad():  # every 2D link starts as the identity
        torch.testing.assert_close(model.extract(batch).point_feats, route2.extract(batch).point_feats)


def test_select_frame_slices_the_per_frame_fields(clip):
    frames = [make_frame(np.random.default_rng(i), 30) for i in range(3)]
    batch = PointBatch.from_dict(make_batch(frames, [True, False, True], clip))
    one = _select_frame(batch, 1)
    assert one.clip_pix.shape == (1, 192, 60, 80) and one.clip_global.shape == (1, 768)
    assert one.clip_valid.tolist() == [False] and torch.equal(one.image[0], batch.image[1])
    assert torch.equal(one.pose[0], batch.pose[1]) and torch.equal(one.coord, batch.coord[30:60])


def test_online_bifusion_clip_through_memory(clip):
    rng = np.random.default_rng(2)
    clip_frames = [PointBatch.from_dict(make_batch([make_frame(rng, 300)], [t == 0], clip)) for t in range(2)]
    model = _bifusion(online=True, fuse_deeper=True).train()
    losses = model.loss_mv(clip_frames)  # one clip of two frames, the second without precomputed features
    assert "loss_merge" in losses and torch.isfinite(sum(losses.values()))
    sum(losses.values()).backward()
    assert model.bi_encoder.fallback_frames == 1 and model.bi_encoder.to_3d[4].weight.grad.abs().sum() > 0
