"""mCov / mWCov / mPrec / mRec (ASIS) on a two-room example computed by hand."""
from __future__ import annotations

import math

import numpy as np
import pytest

from oseg3d.eval.coverage import evaluate_coverage, evaluate_coverage_agnostic, mode_labels


def _masks(n, *ranges):
    m = np.zeros((len(ranges), n), bool)
    for i, (lo, hi) in enumerate(ranges):
        m[i, lo:hi] = True
    return m


# Room 1 (20 points): cabinet 0-9 (inst 1), cabinet 10-13 (inst 2), bed 14-17 (inst 3), 18-19 unannotated.
R1_INST = np.array([1] * 10 + [2] * 4 + [3] * 4 + [0] * 2)
R1_SEM = np.array([3] * 14 + [4] * 4 + [0] * 2)
# p1 cabinet 0-7: IoU 8/10 with inst 1; p2 cabinet 8-13: 2/14 with inst 1, 4/6 with inst 2;
# p3 bed 14-19: 4/6 with inst 3; p4 bed 0-3: no bed overlap (agnostic: 4/10 with inst 1).
R1_PRED = (_masks(20, (0, 8), (8, 14), (14, 20), (0, 4)), np.array([3, 3, 4, 4]))
# Room 2 (10 points): inst 5 on 0-5, five cabinet points and one bed point (mode: cabinet); 6-9 none.
R2_INST = np.array([5] * 6 + [0] * 4)
R2_SEM = np.array([3, 3, 3, 3, 3, 4, 0, 0, 0, 0])
# p1 cabinet 0-2: IoU 3/6 = 0.5 (≥ 0.5: a TP); p2 bed 3-5: no bed GT in room 2 (agnostic: 3/6).
R2_PRED = (_masks(10, (0, 3), (3, 6)), np.array([3, 4]))

ROOMS = ([R1_PRED, R2_PRED], [R1_INST, R2_INST], [R1_SEM, R2_SEM])


def test_two_rooms_by_hand():
    out = evaluate_coverage(*ROOMS, class_ids=(3, 4, 5), class_names=("cabinet", "bed", "chair"))
    cab, bed = out["classes"]["cabinet"], out["classes"]["bed"]
    # cabinet: room 1 Cov (0.8 + 2/3)/2 = 11/15, WCov (0.8·10 + 2/3·4)/14 = 16/21; room 2 0.5
    assert cab["cov"] == pytest.approx((11 / 15 + 0.5) / 2)
    assert cab["wcov"] == pytest.approx((16 / 21 + 0.5) / 2)
    assert (cab["prec"], cab["rec"]) == pytest.approx((1.0, 1.0))  # TP p1, p2 (room 1), p1 (room 2)
    # bed: room 1 only; TP p3, FP p4 and room 2's p2
    assert (bed["cov"], bed["wcov"]) == pytest.approx((2 / 3, 2 / 3))
    assert (bed["prec"], bed["rec"]) == pytest.approx((1 / 3, 1.0))
    assert all(math.isnan(v) for v in out["classes"]["chair"].values())  # no GT, no prediction: skipped
    assert out["mcov"] == pytest.approx(77 / 120)
    assert out["mwcov"] == pytest.approx(109 / 168)
    assert out["mprec"] == pytest.approx(2 / 3)
    assert out["mrec"] == pytest.approx(1.0)


def test_two_rooms_agnostic():
    out = evaluate_coverage_agnostic(*ROOMS, class_ids=(3, 4))
    assert list(out["classes"]) == ["object"]
    # room 1: best IoUs 0.8, 2/3, 2/3 → Cov 32/45, WCov (8 + 16/3)/18 = 20/27; room 2: 0.5
    assert out["mcov"] == pytest.approx((32 / 45 + 0.5) / 2)
    assert out["mwcov"] == pytest.approx((20 / 27 + 0.5) / 2)
    # TP: p1, p2, p3 (room 1), p1, p2 (room 2, IoU 0.5 each); FP: p4 (best 0.4). Room 2's two predictions
    # both hit inst 5: ASIS's recall would be 5/4; each GT counts once here, so 4/4.
    assert out["mprec"] == pytest.approx(5 / 6)
    assert out["mrec"] == pytest.approx(1.0)


def test_duplicates_do_not_push_recall_past_one():
    inst = np.array([1] * 10 + [2] * 10)
    sem = np.full(20, 3)
    dupes = (_masks(20, (0, 10), (0, 9), (1, 10), (0, 8)), np.array([3, 3, 3, 3]))  # four hits on inst 1
    out = evaluate_coverage([dupes], [inst], [sem], class_ids=(3,), class_names=("cabinet",))
    assert out["mprec"] == pytest.approx(1.0)
    assert out["mrec"] == pytest.approx(0.5)  # inst 2 is missed


def test_gt_of_other_classes_left_out():
    out = evaluate_coverage(*ROOMS, class_ids=(4,), class_names=("bed",))
    assert out["mcov"] == pytest.approx(2 / 3)  # the cabinets are no GT; cabinet predictions are not bed


def test_mode_labels():
    masks = _masks(6, (0, 3), (3, 5), (5, 5))
    # mask 0: labels 7, 2, 7 → 7; mask 1: 2, 9 tie → smallest, 2; mask 2 empty → -1
    np.testing.assert_array_equal(mode_labels(masks, np.array([7, 2, 7, 2, 9, 1])), [7, 2, -1])
