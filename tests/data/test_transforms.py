"""Training augmentations: hand-written expectations on frame-sized synthetic clouds (20k points, room-sized)."""
from __future__ import annotations

import numpy as np
import pytest

from oseg3d.data.transforms import (Compose, ElasticDistortion, GlobalRotScaleTrans, RandomFlip, WithRng,
                                    build_train_transforms)

N = 20000
ROOM = np.array([4.0, 4.0, 2.5])
LABEL_KEYS = ("instance", "semantic", "superpoint")


def _rigid(rng: np.random.Generator) -> np.ndarray:
    """A random camera-to-world pose (proper rotation + translation)."""
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    pose = np.eye(4)
    pose[:3, :3] = q * np.sign(np.linalg.det(q))
    pose[:3, 3] = rng.normal(size=3)
    return pose


def _frame(seed: int, n: int = N, coord: np.ndarray | None = None) -> dict:
    """A frame dict in the datasets.py format."""
    rng = np.random.default_rng(seed)
    if coord is None:
        coord = rng.random((n, 3)) * ROOM
    n = len(coord)
    return {
        "coord": np.asarray(coord, np.float32), "color": rng.uniform(0, 255, (n, 3)).astype(np.float32),
        "instance": rng.integers(0, 30, n), "semantic": rng.integers(0, 21, n),
        "superpoint": rng.integers(0, 300, n), "pose": _rigid(rng).astype(np.float32),
        "sample_id": f"scene0000_00_{seed}",
    }


def _clip(n_frames: int = 3, n: int = 2000) -> list[dict]:
    return [_frame(100 + k, n) for k in range(n_frames)]


def _pairwise(a: np.ndarray) -> np.ndarray:
    return np.linalg.norm(a[:, None, :].astype(np.float64) - a[None, :, :], axis=-1)


# ---- RandomFlip ------------------------------------------------------------------------------------

@pytest.mark.parametrize("p_x, p_y, sign", [(1.0, 0.0, [-1, 1, 1]), (0.0, 1.0, [1, -1, 1]),
                                            (1.0, 1.0, [-1, -1, 1]), (0.0, 0.0, [1, 1, 1])])
def test_flip_negates_exactly_the_drawn_axes_and_leaves_labels(p_x, p_y, sign):
    f = _frame(0)
    before = {k: v.copy() for k, v in f.items() if isinstance(v, np.ndarray)}
    out = RandomFlip(p_x, p_y)(f, np.random.default_rng(0))
    np.testing.assert_array_equal(out["coord"], before["coord"] * np.array(sign, np.float32))
    assert out["coord"].dtype == np.float32
    for k in LABEL_KEYS + ("color",):
        np.testing.assert_array_equal(out[k], before[k])
    np.testing.assert_allclose(out["pose"], np.diag(sign + [1]) @ before["pose"], atol=1e-6)
    for k, v in before.items():  # pure: the input is untouched
        np.testing.assert_array_equal(f[k], v)


def test_flip_draws_once_per_clip():
    for seed in range(8):
        clip = _clip()
        out = RandomFlip()(clip, np.random.default_rng(seed))
        signs = [np.sign(o["coord"][:, :2]) * np.sign(c["coord"][:, :2]) for o, c in zip(out, clip)]
        assert all(np.array_equal(s, signs[0]) for s in signs)  # same flip on every frame
        assert (signs[0] == signs[0][0]).all()  # and one flip per axis for all points of a frame


# ---- GlobalRotScaleTrans ---------------------------------------------------------------------------

def test_rot_scale_trans_scales_distances_and_shifts_centroid_by_translation():
    f = _frame(1, n=500)
    f["coord"] = (f["coord"] - f["coord"].mean(0)).astype(np.float32)  # centroid at the origin
    t = GlobalRotScaleTrans().sample(np.random.default_rng(7))
    out = GlobalRotScaleTrans()(f, np.random.default_rng(7))
    s = np.cbrt(np.linalg.det(t[:3, :3]))
    assert 0.8 <= s <= 1.2 and np.allclose(t[:3, :3] / s @ (t[:3, :3] / s).T, np.eye(3), atol=1e-9)
    np.testing.assert_allclose(t[2, :3], [0, 0, s], atol=1e-12)  # rotation about z only
    d0, d1 = _pairwise(f["coord"]), _pairwise(out["coord"])
    np.testing.assert_allclose(d1, s * d0, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(out["coord"].mean(0), t[:3, 3], atol=1e-5)
    assert out["coord"].dtype == np.float32
    for k in LABEL_KEYS:
        assert out[k] is f[k]


def test_rot_scale_trans_updates_pose_so_camera_points_land_on_the_new_coordinates():
    f = _frame(2, n=100)
    cam = np.array([0.3, -0.2, 1.7, 1.0])  # a point 1.7 m in front of the camera
    world = f["pose"].astype(np.float64) @ cam
    f["coord"][0] = world[:3]
    out = GlobalRotScaleTrans()(f, np.random.default_rng(3))
    np.testing.assert_allclose((out["pose"].astype(np.float64) @ cam)[:3], out["coord"][0], atol=1e-5)
    assert out["pose"].dtype == np.float32
    # and the other way round: world → camera through the new pose recovers the camera point
    back = np.linalg.solve(out["pose"].astype(np.float64), np.append(out["coord"][0], 1.0))
    np.testing.assert_allclose(back, cam, atol=1e-5)


def test_rot_scale_trans_applies_one_draw_to_every_frame_of_a_clip():
    clip = _clip(n=300)
    t = GlobalRotScaleTrans().sample(np.random.default_rng(11))
    out = GlobalRotScaleTrans()(clip, np.random.default_rng(11))
    for o, c in zip(out, clip):
        np.testing.assert_allclose(o["coord"], c["coord"] @ t[:3, :3].T + t[:3, 3], atol=1e-5)
        np.testing.assert_allclose(o["pose"], t @ c["pose"], atol=1e-5)
    # relative geometry between frames: cross-frame distances scale by s
    s = np.cbrt(np.linalg.det(t[:3, :3]))
    def cross(frames):
        return np.linalg.norm(frames[0]["coord"][:, None].astype(np.float64) - frames[1]["coord"][None], axis=-1)

    np.testing.assert_allclose(cross(out), s * cross(clip), rtol=1e-4, atol=1e-5)


# ---- ElasticDistortion -----------------------------------------------------------------------------

# Each stage moves a point by mag · (a convex combination of blurred N(0,1) nodes) voxels per component;
# the blur (two 3-tap boxes per axis) leaves a std ≤ (19/81)^1.5 ≈ 0.114, so 5σ summed over the stages:
ELASTIC_BOUND_M = 5 * (19 / 81) ** 1.5 * (40 + 160) * 0.02  # ≈ 2.27 m


def test_elastic_is_deterministic_for_a_seeded_generator_and_keeps_coord():
    f = _frame(3)
    e = ElasticDistortion(p=1.0)
    a, b = e(f, np.random.default_rng(5)), e(f, np.random.default_rng(5))
    np.testing.assert_array_equal(a["voxel_coord"], b["voxel_coord"])
    assert not np.allclose(a["voxel_coord"], e(f, np.random.default_rng(6))["voxel_coord"])
    assert a["coord"] is f["coord"] and a["voxel_coord"].dtype == np.float32
    assert a["voxel_coord"].shape == f["coord"].shape


def test_elastic_displacement_is_bounded_by_the_magnitude():
    f = _frame(4)
    out = ElasticDistortion(p=1.0)(f, np.random.default_rng(0))
    d = out["voxel_coord"] - f["coord"]
    assert np.isfinite(d).all()
    assert np.abs(d).max() <= ELASTIC_BOUND_M
    assert np.median(np.linalg.norm(d, axis=1)) > 0.05  # it really distorts (stage 2 alone: std ≈ 36 cm)


def test_elastic_skipped_with_probability_writes_an_undistorted_copy():
    f = _frame(5)
    out = ElasticDistortion(p=0.0)(f, np.random.default_rng(0))
    np.testing.assert_array_equal(out["voxel_coord"], f["coord"])
    assert out["voxel_coord"] is not f["coord"]


def test_elastic_field_is_smooth():
    rng = np.random.default_rng(1)
    base = rng.random((10000, 3)) * ROOM
    off = rng.normal(size=base.shape)
    off *= rng.uniform(0, 0.02, (len(base), 1)) / np.linalg.norm(off, axis=1, keepdims=True)  # ≤ 2 cm
    f = _frame(6, coord=np.concatenate([base, base + off]))
    out = ElasticDistortion(p=1.0)(f, np.random.default_rng(2))
    d = (out["voxel_coord"] - f["coord"]).astype(np.float64)
    near = np.linalg.norm(d[:10000] - d[10000:], axis=1)
    far = np.linalg.norm(d[:10000] - d[rng.permutation(10000)], axis=1)
    # slope of the field ~0.25 voxel per voxel per stage: 2 cm neighbours differ by a few cm at most
    assert near.max() < 0.08
    assert np.median(near) < 0.05 * np.median(far)


def test_elastic_clip_frames_share_one_field():
    clip = _clip(n_frames=4, n=3000)
    clip[2]["coord"][:500] = clip[0]["coord"][:500]  # the same surface seen in frames 0 and 2
    out = ElasticDistortion(p=1.0)(clip, np.random.default_rng(9))
    np.testing.assert_allclose(out[2]["voxel_coord"][:500], out[0]["voxel_coord"][:500], atol=1e-6)
    assert not np.allclose(out[0]["voxel_coord"], clip[0]["coord"], atol=1e-3)
    assert [len(o["voxel_coord"]) for o in out] == [3000] * 4


# ---- Compose / build / WithRng ---------------------------------------------------------------------

def _check_frame(out: dict, ref: dict) -> None:
    assert set(out) == set(ref) | {"voxel_coord"}
    for k, v in ref.items():
        if isinstance(v, np.ndarray):
            assert out[k].dtype == v.dtype and out[k].shape == v.shape, k
            assert np.isfinite(out[k]).all(), k
    assert out["voxel_coord"].dtype == np.float32 and np.isfinite(out["voxel_coord"]).all()
    assert out["sample_id"] == ref["sample_id"]


@pytest.mark.parametrize("seed", range(4))
def test_build_train_transforms_keeps_keys_and_dtypes(seed):
    sv, mv = build_train_transforms("sv"), build_train_transforms("mv")
    assert [type(t) for t in sv.transforms] == [RandomFlip, GlobalRotScaleTrans, ElasticDistortion]
    f = _frame(seed)
    _check_frame(sv(f, np.random.default_rng(seed)), f)
    clip = _clip()
    out = mv(clip, np.random.default_rng(seed))
    assert isinstance(out, list) and len(out) == len(clip)
    for o, c in zip(out, clip):
        _check_frame(o, c)


def test_build_without_elastic_and_bad_mode():
    t = build_train_transforms("mv", elastic=False)
    assert [type(x) for x in t.transforms] == [RandomFlip, GlobalRotScaleTrans]
    assert "voxel_coord" not in t(_frame(0, n=100), np.random.default_rng(0))
    with pytest.raises(ValueError):
        build_train_transforms("offline")


def test_compose_applies_in_order_with_one_generator():
    f = _frame(0, n=200)
    c = Compose([RandomFlip(1.0, 0.0), GlobalRotScaleTrans(rot_range=(0, 0), scale_range=(2, 2),
                                                           translation_std=(0, 0, 0))])
    out = c(f, np.random.default_rng(0))
    np.testing.assert_allclose(out["coord"], f["coord"] * np.array([-2, 2, 2], np.float32), atol=1e-6)


def test_with_rng_adapts_to_one_argument_and_is_reproducible():
    import torch

    f = _frame(0, n=200)
    run = lambda seed: WithRng(build_train_transforms("sv"), seed=seed)  # noqa: E731
    torch.manual_seed(0)
    a_first, a_second = (w := run(1))(f)["coord"], w(f)["coord"]
    torch.manual_seed(0)
    b_first = run(1)(f)["coord"]
    np.testing.assert_array_equal(a_first, b_first)  # same torch seed + same seed → same stream
    assert not np.array_equal(a_first, a_second)  # the stream advances call by call
    torch.manual_seed(0)
    assert not np.array_equal(run(2)(f)["coord"], a_first)
