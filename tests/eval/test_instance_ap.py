"""ScanNet instance AP against hand-computed values, and against numbers of the official script.

Scenes are built from point ranges; class ids are raw nyu40 ids (3 cabinet, 4 bed, 5 chair, 1 wall).
"""
from __future__ import annotations

import math

import numpy as np
import pytest

from oseg3d.eval.instance_ap import (
    OVERLAPS, SceneInstances, average_precision, encode_gt_ids, evaluate_instances,
    evaluate_instances_agnostic, instance_classes,
)

CLASS_IDS = (3, 4, 5)
NAMES = ("cabinet", "bed", "chair")


def _gt(n, *objects):
    """GT ids over n points from (lo, hi, raw class, instance) ranges; the rest is unannotated (void)."""
    inst, sem = np.zeros(n, np.int64), np.zeros(n, np.int64)
    for lo, hi, cls, k in objects:
        inst[lo:hi], sem[lo:hi] = k, cls
    return encode_gt_ids(inst, sem)


def _pred(n, *instances):
    """Predictions from (ranges, label, score); ranges is a list of (lo, hi)."""
    masks = np.zeros((len(instances), n), bool)
    for i, (ranges, _, _) in enumerate(instances):
        for lo, hi in ranges:
            masks[i, lo:hi] = True
    labels = np.array([x[1] for x in instances], np.int64)
    scores = np.array([x[2] for x in instances], np.float64)
    return SceneInstances(masks, labels, scores)


def _ap(pred, gt):
    return evaluate_instances([pred], [gt], CLASS_IDS, NAMES)


# cabinet 0-199 (inst 1), bed 200-399 (inst 2), wall 400-599 (inst 3, not a thing: void), 600-699 unannotated
GT = _gt(700, (0, 200, 3, 1), (200, 400, 4, 2), (400, 600, 1, 3))


def test_encode_gt_ids():
    np.testing.assert_array_equal(encode_gt_ids([0, 1, 2, 7], [0, 3, 3, 39]), [0, 3001, 3002, 39007])
    with pytest.raises(ValueError):
        encode_gt_ids([1000], [3])


def test_instance_classes():
    ids, names = instance_classes("scannet")
    assert ids == (3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 14, 16, 24, 28, 33, 34, 36, 39) and names[0] == "cabinet"
    ids200, names200 = instance_classes("scannet200")
    assert len(ids200) == len(names200) == 198 and 1 not in ids200 and 3 not in ids200 and 2 in ids200


def test_perfect_prediction():
    pred = _pred(700, ([(0, 200)], 3, 0.9), ([(200, 400)], 4, 0.8))
    # class ids in any order: results follow the names given
    out = evaluate_instances([pred], [GT], (5, 4, 3), ("chair", "bed", "cabinet"))
    for name in ("cabinet", "bed"):
        assert out["classes"][name] == {"ap": 1.0, "ap50%": 1.0, "ap25%": 1.0}
    assert all(math.isnan(v) for v in out["classes"]["chair"].values())  # no GT
    assert (out["all_ap"], out["all_ap_50%"], out["all_ap_25%"]) == (1.0, 1.0, 1.0)
    assert list(out["classes"]) == ["chair", "bed", "cabinet"]


def test_gt_without_prediction_is_zero():
    out = _ap(_pred(700, ([(0, 200)], 3, 0.9)), GT)
    assert out["classes"]["bed"] == {"ap": 0.0, "ap50%": 0.0, "ap25%": 0.0}
    assert out["all_ap_50%"] == 0.5


def test_iou_exactly_half_is_no_match_at_50():
    # 100 of the cabinet's 200 points: IoU = 100 / 200 = 0.5, not > 0.5; 101 points: IoU 0.505.
    out = _ap(_pred(700, ([(0, 100)], 3, 0.9)), GT)["classes"]["cabinet"]
    assert out == {"ap": 0.0, "ap50%": 0.0, "ap25%": 1.0}
    out = _ap(_pred(700, ([(0, 101)], 3, 0.9)), GT)["classes"]["cabinet"]
    assert out["ap50%"] == 1.0 and out["ap25%"] == 1.0 and out["ap"] == pytest.approx(1 / 9)


def test_duplicate_is_false_positive():
    # Two cabinets; A matches GT1 (0.9), B duplicates GT1 (0.8), C matches GT2 (0.7).
    gt = _gt(700, (0, 200, 3, 1), (200, 400, 3, 2))
    pred = _pred(700, ([(0, 200)], 3, 0.9), ([(0, 190)], 3, 0.8), ([(200, 400)], 3, 0.7))
    # PR entries (1, .9) (0, .8) (1, .7): points (P, R) = (2/3, 1), (1/2, 1/2), (1, 1/2), (1, 0);
    # step widths 1/4 each → AP = 1/6 + 1/8 + 1/4 + 1/4 = 19/24; without B it would be 1.
    out = evaluate_instances([pred], [gt], CLASS_IDS, NAMES)["classes"]["cabinet"]
    assert out == pytest.approx({"ap": 19 / 24, "ap50%": 19 / 24, "ap25%": 19 / 24}, abs=1e-12)
    no_dup = _pred(700, ([(0, 200)], 3, 0.9), ([(200, 400)], 3, 0.7))
    assert evaluate_instances([no_dup], [gt], CLASS_IDS, NAMES)["classes"]["cabinet"]["ap"] == 1.0


def test_duplicate_stays_available_for_another_gt():
    # The script does not mark a duplicate as used: S (80 points in each of two 100-point GTs, IoU 4/9)
    # is a duplicate of GT1 (already matched by A) and then matches GT2 at 0.25.
    gt = _gt(300, (0, 100, 3, 1), (100, 200, 3, 2))
    pred = _pred(300, ([(0, 100)], 3, 0.9), ([(20, 180)], 3, 0.8))
    out = evaluate_instances([pred], [gt], CLASS_IDS, NAMES)["classes"]["cabinet"]
    # 0.25: entries (1, .9) (0, .8) (1, .8) → (2/3, 1), (1, 1/2), (1, 0) → 1/6 + 1/2 + 1/4 = 11/12.
    # 0.50: S matches nothing → FP (.8), GT2 missed → (1/2, 1/2), (1, 1/2), (1, 0) → 0 + 1/4 + 1/4.
    assert out["ap25%"] == pytest.approx(11 / 12, abs=1e-12)
    assert out["ap50%"] == pytest.approx(0.5, abs=1e-12)


def test_prediction_under_100_points_dropped():
    # A cabinet prediction on 99 / 100 bed points: dropped / a false positive scoring above the TP.
    for n, expected in ((99, 1.0), (100, 0.25)):
        pred = _pred(700, ([(0, 200)], 3, 0.9), ([(200, 200 + n)], 3, 0.95))
        # with the FP: (1/2, 1), (0, 0), (1, 0) → widths 1/2, 1/2, 0 → AP 1/4
        assert _ap(pred, GT)["classes"]["cabinet"]["ap50%"] == expected


def test_gt_under_100_points_ignored():
    # Cabinet GT of 99 points (inst 4) next to a 200-point one. Its prediction (99 + 1 void point, IoU
    # 0.99) is neither TP nor FP, and the small GT is no false negative.
    gt = _gt(700, (0, 200, 3, 1), (300, 399, 3, 4))
    pred = _pred(700, ([(300, 400)], 3, 0.9), ([(0, 200)], 3, 0.5))
    assert _ap(pred, gt)["classes"]["cabinet"] == {"ap": 1.0, "ap50%": 1.0, "ap25%": 1.0}
    only_small = _gt(700, (300, 399, 3, 4))
    assert math.isnan(_ap(pred, only_small)["classes"]["cabinet"]["ap"])  # no GT left


def test_false_positive_mostly_on_void():
    # B: 150 void points (wall, unannotated) + 50 bed points. Ignored while 0.75 > threshold.
    pred = _pred(700, ([(0, 200)], 3, 0.9), ([(550, 700), (200, 250)], 3, 0.95))
    out = _ap(pred, GT)["classes"]["cabinet"]
    per_threshold = [1.0] * 5 + [0.25] * 4  # 0.50..0.70 ignored; 0.75..0.90 a FP above the TP (AP 1/4)
    assert out["ap50%"] == 1.0 and out["ap25%"] == 1.0
    assert out["ap"] == pytest.approx(np.mean(per_threshold), abs=1e-12)


def test_small_pr_curve():
    # Two cabinets, three predictions: P1 a FP on the bed (0.9), P2 = GT1 (0.8), P3 = GT2 (0.6).
    gt = _gt(700, (0, 200, 3, 1), (200, 400, 3, 2), (400, 600, 4, 3))
    pred = _pred(700, ([(400, 600)], 3, 0.9), ([(0, 200)], 3, 0.8), ([(200, 400)], 3, 0.6))
    # (P, R) = (2/3, 1), (1/2, 1/2), (0, 0), (1, 0); widths 1/4, 1/2, 1/4, 0 → 1/6 + 1/4 = 5/12
    out = evaluate_instances([pred], [gt], CLASS_IDS, NAMES)
    assert out["classes"]["cabinet"]["ap"] == pytest.approx(5 / 12, abs=1e-12)
    assert out["classes"]["bed"]["ap"] == 0.0  # GT, no bed prediction
    assert out["all_ap"] == pytest.approx(5 / 24, abs=1e-12)
    assert average_precision(np.array([0, 1, 1]), np.array([0.9, 0.8, 0.6]), 0) == pytest.approx(5 / 12)
    # a missed third GT: (2/3, 2/3), (1/2, 1/3), (0, 0), (1, 0) → 1/9 + 1/6
    assert average_precision(np.array([0, 1, 1]), np.array([0.9, 0.8, 0.6]), 1) == pytest.approx(5 / 18)


def test_every_prediction_ignored_gives_zero():
    # GT and a prediction exist but the prediction lies on void: the official script crashes here,
    # mmdet3d (ScanNet PR #26) gives 0.
    pred = _pred(700, ([(400, 700)], 3, 0.9))
    assert _ap(pred, GT)["classes"]["cabinet"]["ap"] == 0.0
    assert average_precision(np.zeros(0), np.zeros(0), 2) == 0.0


def test_class_agnostic():
    # Predicted labels are wrong or unknown; the wall prediction lies on void (wall is no thing class).
    pred = _pred(700, ([(0, 200)], 4, 0.9), ([(200, 400)], 99, 0.8), ([(400, 600)], 3, 0.5))
    agn = evaluate_instances_agnostic([pred], [GT], CLASS_IDS)
    assert list(agn["classes"]) == ["object"]
    assert (agn["all_ap"], agn["all_ap_50%"], agn["all_ap_25%"]) == (1.0, 1.0, 1.0)
    aware = _ap(pred, GT)
    assert aware["all_ap"] == 0.0
    # only things count: with cabinet alone, the bed becomes void
    assert evaluate_instances_agnostic([pred], [GT], (3,))["all_ap"] == 1.0


def test_empty_inputs():
    pred = SceneInstances(np.zeros((0, 700), bool), np.zeros(0, np.int64), np.zeros(0))
    out = _ap(pred, GT)
    assert out["classes"]["cabinet"]["ap"] == 0.0 and math.isnan(out["classes"]["chair"]["ap"])
    out = evaluate_instances([], [], CLASS_IDS, NAMES)
    assert math.isnan(out["all_ap"])
    with pytest.raises(ValueError):
        evaluate_instances([pred], [GT[:10]], CLASS_IDS, NAMES)


def _random_scenes(seed: int, n_scenes: int = 4, n_points: int = 2000):
    """Random scenes with near-copies, duplicates, wrong labels, small instances, void and tied scores."""
    rng = np.random.default_rng(seed)
    scenes = []
    for _ in range(n_scenes):
        inst = np.zeros(n_points, np.int64)
        sem = np.zeros(n_points, np.int64)
        perm = rng.permutation(n_points)
        pos = 0
        for k in range(1, 9):
            size = int(rng.integers(40, 350))
            inst[perm[pos:pos + size]], sem[perm[pos:pos + size]] = k, rng.choice([1, 3, 3, 4, 4, 5, 7])
            pos += size
        masks, labels, scores = [], [], []
        for k in range(1, 9):
            pts = np.flatnonzero(inst == k)
            for _ in range(int(rng.integers(0, 3))):
                m = np.zeros(n_points, bool)
                m[pts[rng.random(len(pts)) < rng.uniform(0.4, 1.0)]] = True
                m[rng.integers(0, n_points, int(rng.integers(0, 60)))] = True
                masks.append(m)
                labels.append(sem[pts[0]] if rng.random() < 0.8 else int(rng.choice(CLASS_IDS)))
                scores.append(round(float(rng.random()), 1))
        scenes.append((encode_gt_ids(inst, sem), SceneInstances(np.array(masks), np.array(labels), np.array(scores))))
    return scenes


# Computed once with the official script (mmdet3d's Python 3 port of ScanNet's evaluate_semantic_instance.py,
# unmodified but for np.in1d → np.isin) on `_random_scenes(0)`; our values matched to the last bit.
OFFICIAL_SEED0 = {
    "all_ap": 0.11976043503821279,
    "all_ap_50%": 0.38306878306878306,
    "all_ap_25%": 0.5761243386243385,
    "cabinet/ap": 0.12764550264550262,
    "cabinet/ap50%": 0.1964285714285714,
    "cabinet/ap25%": 0.5714285714285714,
    "bed/ap": 0.16064814814814812,
    "bed/ap50%": 0.42499999999999993,
    "bed/ap25%": 0.6291666666666667,
    "chair/ap": 0.07098765432098765,
    "chair/ap50%": 0.5277777777777777,
    "chair/ap25%": 0.5277777777777777,
    "agnostic/all_ap": 0.15102237654320988,
    "agnostic/all_ap_50%": 0.41666666666666663,
    "agnostic/all_ap_25%": 0.6590277777777778,
}


def test_matches_official_script_on_random_scenes():
    scenes = _random_scenes(0)
    out = evaluate_instances([s[1] for s in scenes], [s[0] for s in scenes], CLASS_IDS, NAMES)
    agn = evaluate_instances_agnostic([s[1] for s in scenes], [s[0] for s in scenes], CLASS_IDS)
    got = {k: out[k] for k in ("all_ap", "all_ap_50%", "all_ap_25%")}
    got.update({f"{n}/{k}": out["classes"][n][k] for n in NAMES for k in ("ap", "ap50%", "ap25%")})
    got.update({f"agnostic/{k}": agn[k] for k in ("all_ap", "all_ap_50%", "all_ap_25%")})
    assert got == pytest.approx(OFFICIAL_SEED0, abs=1e-15, nan_ok=True)


def test_overlaps_are_the_scripts():
    assert len(OVERLAPS) == 10 and OVERLAPS[-1] == 0.25 and OVERLAPS[0] == 0.5
    np.testing.assert_array_equal(OVERLAPS[:9], np.arange(0.5, 0.95, 0.05))
