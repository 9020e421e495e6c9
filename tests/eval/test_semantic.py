"""Semantic mIoU / accuracy against a hand-built confusion matrix."""
from __future__ import annotations

import math

import numpy as np
import pytest

from oseg3d.eval.semantic import ConfusionMatrix, semantic_metrics

# 3 classes, ignore index 3. Scene 2 predicts 5, outside the classes: a miss, no false positive.
PREDS = [np.array([0, 0, 1, 1, 1, 0, 2, 0]), np.array([1, 2, 5])]
GTS = [np.array([0, 0, 0, 1, 1, 2, 3, 3]), np.array([1, 2, 2])]


def test_hand_confusion_matrix():
    out = semantic_metrics(PREDS, GTS, 3, ignore_index=3, class_names=("a", "b", "c"))
    # rows GT, columns prediction; the two ignored points (GT 3) count nowhere
    np.testing.assert_array_equal(out["confusion"], [[2, 1, 0], [0, 3, 0], [1, 0, 1]])
    np.testing.assert_array_equal(out["unknown"], [0, 0, 1])
    # IoU = TP / (GT + FP): a 2/(3+1), b 3/(3+1), c 1/(3+0)
    assert [out["classes"][n]["iou"] for n in "abc"] == pytest.approx([1 / 2, 3 / 4, 1 / 3])
    assert out["miou"] == pytest.approx(19 / 36)
    assert out["acc"] == pytest.approx(6 / 9)
    assert out["acc_cls"] == pytest.approx((2 / 3 + 1 + 1 / 3) / 3)


def test_accumulates_like_one_pass():
    cm = ConfusionMatrix(3, ignore_index=3)
    for p, g in zip(PREDS, GTS):
        cm.update(p, g)
    once = semantic_metrics([np.concatenate(PREDS)], [np.concatenate(GTS)], 3, ignore_index=3)
    assert cm.compute()["miou"] == once["miou"]
    np.testing.assert_array_equal(cm.compute()["confusion"], once["confusion"])


def test_absent_class_nan_false_positive_class_zero():
    # class 1 only predicted (IoU 0, counted in the mean), class 2 nowhere (NaN, skipped)
    out = semantic_metrics([np.array([0, 1])], [np.array([0, 0])], 3)
    ious = [out["classes"][str(c)]["iou"] for c in range(3)]
    assert ious[:2] == [0.5, 0.0] and math.isnan(ious[2])
    assert out["miou"] == 0.25


def test_shape_mismatch():
    with pytest.raises(ValueError):
        ConfusionMatrix(3).update(np.zeros(3), np.zeros(4))
