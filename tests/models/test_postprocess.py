"""Matrix NMS and per-frame post-processing, against hand-computed scores."""
from __future__ import annotations

import math

import pytest
import torch

from oseg3d.models.postprocess import matrix_nms, postprocess_frame


def _mask(n, *ranges):
    m = torch.zeros(n, dtype=torch.bool)
    for lo, hi in ranges:
        m[lo:hi] = True
    return m


# A = points 0-3, B = 2-5, C = 4-9: IoU(A,B) = 2/6, IoU(B,C) = 2/8, IoU(A,C) = 0.
# Given in the order C, A, B with scores 0.7, 0.9, 0.8 (so the rank order is A, B, C).
MASKS = torch.stack([_mask(10, (4, 10)), _mask(10, (0, 4)), _mask(10, (2, 6))])
SCORES = torch.tensor([0.7, 0.9, 0.8])


def test_matrix_nms_linear():
    out = matrix_nms(MASKS, torch.zeros(3, dtype=torch.long), SCORES, kernel="linear")
    # B: decayed by A, (1 − 1/3) / (1 − 0). C: by B (1 − 1/4) / (1 − 1/3) = 9/8 and by A 1/1 → min 1:
    # B, C's only suppressor, is itself suppressed (compensation).
    torch.testing.assert_close(out, torch.tensor([0.7, 0.9, 0.8 * 2 / 3]))


def test_matrix_nms_gaussian():
    out = matrix_nms(MASKS, torch.zeros(3, dtype=torch.long), SCORES, kernel="gaussian", sigma=2.0)
    # B: exp(−2·(1/3)²); C: min(1 [A], exp(−2·(1/16 − 1/9)) > 1 [B]) = 1
    torch.testing.assert_close(out, torch.tensor([0.7, 0.9, 0.8 * math.exp(-2 / 9)]))


def test_matrix_nms_only_same_label():
    labels = torch.tensor([0, 0, 1])  # B alone in class 1: nothing suppresses it
    out = matrix_nms(MASKS, labels, SCORES)
    torch.testing.assert_close(out, SCORES)


def test_matrix_nms_exact_duplicates_give_zero_not_nan():
    masks = _mask(10, (0, 5)).expand(3, 10)
    out = matrix_nms(masks, torch.zeros(3, dtype=torch.long), torch.tensor([0.9, 0.8, 0.7]))
    torch.testing.assert_close(out, torch.tensor([0.9, 0.0, 0.0]))


def test_matrix_nms_empty_and_bad_kernel():
    assert matrix_nms(torch.zeros(0, 5), torch.zeros(0, dtype=torch.long), torch.zeros(0)).shape == (0,)
    with pytest.raises(ValueError):
        matrix_nms(MASKS, torch.zeros(3, dtype=torch.long), SCORES, kernel="box")


def _tiny_frame():
    """5 queries, 2 classes + no-object, 300 points; masks at logits ±20 (objectness ≈ 1)."""
    probs = torch.tensor([
        [0.80, 0.10, 0.10],  # q0: points 0-149
        [0.10, 0.60, 0.30],  # q1: points 150-299
        [0.05, 0.05, 0.90],  # q2: all 300 points
        [0.50, 0.30, 0.20],  # q3: points 0-59 (too small)
        [0.05, 0.35, 0.60],  # q4: points 150-279
    ])
    ranges = [(0, 150), (150, 300), (0, 300), (0, 60), (150, 280)]
    masks = torch.stack([_mask(300, r) for r in ranges])
    return probs.log(), torch.where(masks, 20.0, -20.0)


def test_postprocess_class_aware():
    cls, masks = _tiny_frame()
    pred = postprocess_frame(cls, masks, class_agnostic=False, topk=5)
    # top-5 pairs: q0c0 .8, q1c1 .6, q3c0 .5, q4c1 .35, q3c1 .3. NMS: q3c0 by q0 (IoU .4) → .3;
    # q4c1 by q1 (IoU 13/15) → .35·2/15 < .25 dropped; q3 (60 points ≤ 100) dropped.
    torch.testing.assert_close(pred.scores, torch.tensor([0.8, 0.6]))
    assert pred.labels.tolist() == [0, 1]
    assert pred.query_index.tolist() == [0, 1]
    assert torch.equal(pred.masks, masks[:2] > 0)


def test_postprocess_class_agnostic():
    cls, masks = _tiny_frame()
    pred = postprocess_frame(cls, masks, class_agnostic=True, topk=5, score_thr=0.04)
    # scores .9 q0, .8 q3, .7 q1, .4 q4, .1 q2. Linear NMS: q3 .8·.6 = .48 (dropped: 60 points),
    # q4 .4·2/15 = .0533, q2 .1·min(.5 [q0], .8/.6 [q3], .5 [q1], (17/30)/(2/15) [q4]) = .05
    torch.testing.assert_close(pred.scores, torch.tensor([0.9, 0.7, 0.4 * 2 / 15, 0.05]))
    assert pred.labels.tolist() == [0, 0, 0, 0]
    assert pred.query_index.tolist() == [0, 1, 4, 2]


def test_postprocess_topk_and_no_nms():
    cls, masks = _tiny_frame()
    pred = postprocess_frame(cls, masks, class_agnostic=True, topk=2)
    assert pred.query_index.tolist() == [0]  # top-2 are q0, q3; q3 has 60 points
    pred = postprocess_frame(cls, masks, class_agnostic=True, topk=5, nms=False)
    torch.testing.assert_close(pred.scores, torch.tensor([0.9, 0.7, 0.4]))
    assert pred.query_index.tolist() == [0, 1, 4]


def test_objectness_uses_positive_logits_and_binarises_at_mask_thr():
    cls = torch.tensor([[0.9, 0.1]]).log()  # one class, score .9
    logit = torch.cat([torch.full((200,), math.log(3.0)),  # sigmoid .75
                       torch.full((100,), math.log(0.45 / 0.55)),  # sigmoid .45: in the mask, not in the mean
                       torch.full((100,), -20.0)])
    pred = postprocess_frame(cls, logit[None], class_agnostic=True)
    torch.testing.assert_close(pred.scores, torch.tensor([0.9 * 0.75]))
    assert int(pred.masks.sum()) == 300


def test_postprocess_min_points_is_strict():
    cls = torch.tensor([[0.9, 0.1], [0.8, 0.2]]).log()
    masks = torch.stack([_mask(400, (0, 100)), _mask(400, (200, 301))])
    pred = postprocess_frame(cls, torch.where(masks, 20.0, -20.0), class_agnostic=True)
    assert pred.query_index.tolist() == [1]  # 100 points dropped, 101 kept
