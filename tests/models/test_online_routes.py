"""Online streaming of every route: the segmenter runs the model's own encoder (neck ❷, Bi-Fusion ❸)."""
from __future__ import annotations

import contextlib
from collections import defaultdict

import numpy as np
import pytest
import torch

from oseg3d.clip.conv1 import load_clip_conv1
from oseg3d.engine.weights import partial_load
from oseg3d.models.batch import PointBatch
from oseg3d.models.build import ModelConfig, build_model
from oseg3d.models.online import OnlineConfig, OnlineSegmenter

from ._synth import make_batch, make_frame, random_pose

CFG = OnlineConfig(inst_score_thr=0.0, npoint_thr=5)


@pytest.fixture(scope="module")
def clip():
    return load_clip_conv1(None, allow_random_init=True)[0]


def _stream(rng: np.random.Generator, n_frames: int = 3, n: int = 400) -> list[dict]:
    """Frames of one camera moving a little: consecutive frames overlap, as in a scan."""
    pose = random_pose(rng)
    frames = []
    for _ in range(n_frames):
        p = pose.copy()
        p[:3, 3] += rng.normal(0, 0.05, 3)
        frames.append(make_frame(rng, n, pose=p))
    return frames


class _Timer:
    def __init__(self):
        self.times = defaultdict(float)
        self.open = 0

    @contextlib.contextmanager
    def __call__(self, name):
        assert self.open == 0, "components must not nest (their times would be counted twice)"
        self.open += 1
        try:
            yield
        finally:
            self.open -= 1
            self.times[name] += 1.0


def _run(model, batches, timer=None):
    seg = OnlineSegmenter(model, CFG, **({"timer": timer} if timer else {}))
    for b in batches:
        seg.step(b)
    return seg.result()


def test_route2_streams_through_the_neck_and_starts_as_route1():
    frames = _stream(np.random.default_rng(0))
    batches = [PointBatch.from_dict(make_batch([f])) for f in frames]
    torch.manual_seed(0)
    route1 = build_model(ModelConfig(online=True)).eval()
    route2 = build_model(ModelConfig(online=True, neck="tiny_sa")).eval()
    report = partial_load(route2, route1.state_dict(), {})
    assert all(k.startswith("neck.") for k in report.missing) and not report.unexpected
    calls = []
    hook = route2.neck.register_forward_hook(lambda *_: calls.append(1))
    timer = _Timer()
    masks, labels, scores = _run(route2, batches, timer)
    hook.remove()
    assert len(calls) == len(frames)  # the neck runs on every frame
    assert masks.shape == (len(masks), 3 * 400) and len(masks) > 0 and len(labels) == len(scores) == len(masks)
    assert set(timer.times) == {"backbone", "memory", "decoder", "postprocess", "merge"}
    assert timer.times["memory"] == len(frames)
    # a zero-initialised neck is the identity: ❷ with ❶'s weights streams exactly like ❶
    ref = _run(route1, batches)
    assert torch.equal(masks, ref[0]) and torch.equal(labels, ref[1])
    torch.testing.assert_close(scores, ref[2])
    # a trained neck changes the output (the old step skipped it silently)
    with torch.no_grad():
        for blk in route2.neck.blocks:
            for p in blk.parameters():
                p.add_(0.05 * torch.randn_like(p))
    other = _run(route2, batches)
    assert other[0].shape != ref[0].shape or not torch.equal(other[0], ref[0]) or not torch.equal(other[2], ref[2])


def test_route3_streams_with_precomputed_features_and_the_image_fallback(clip):
    frames = _stream(np.random.default_rng(1), 4)
    valid = [True, False, True, True]  # frame 1 has no precomputed features: conv1 runs on its image
    batches = [PointBatch.from_dict(make_batch([f], [v], clip)) for f, v in zip(frames, valid)]
    assert batches[1].image is not None and batches[0].image is None
    torch.manual_seed(0)
    model = build_model(ModelConfig(online=True, neck="tiny_sa", encoder="bifusion", clip_random_init=True)).eval()
    assert model.backbone is None
    timer = _Timer()
    masks, labels, scores = _run(model, batches, timer)
    assert masks.shape == (len(masks), 4 * 400) and len(masks) > 0 and len(labels) == len(scores) == len(masks)
    assert model.bi_encoder.fallback_frames == 1
    assert set(timer.times) == {"backbone", "memory", "decoder", "postprocess", "merge"}
    # the 2D branch reaches the output: other CLIP features, other instances
    with torch.no_grad():
        model.bi_encoder.film.weight.normal_(0, 0.5)
    a = _run(model, batches)
    for b in batches:
        b.clip_global = torch.randn_like(b.clip_global.float()).half()
    b_ = _run(model, batches)
    assert a[0].shape != b_[0].shape or not torch.equal(a[0], b_[0]) or not torch.equal(a[2], b_[2])
