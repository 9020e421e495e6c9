"""ScanNet instance-segmentation AP, numerically identical to the official benchmark script.

The rules are those of ScanNet's `BenchmarkScripts/3d_evaluation/evaluate_semantic_instance.py` (and its
mmdet3d port that ESAM calls, reference/esam.md §4.2):

- GT ids per point are `1000·raw_class + instance`; points whose class is not evaluated are void.
  GT instances under `min_region_size` points are ignored, so are "groups" (id < 1000).
- Predictions of a class that is not evaluated, or under `min_region_size` points, are dropped.
- IoU thresholds 0.50:0.05:0.90 plus 0.25; a match needs IoU strictly above the threshold.
- Greedy matching: GTs in ascending id order, each looking at its overlapping predictions in input
  order. The first unused one above the threshold matches; a later one above the threshold is a
  duplicate: the GT keeps the higher score and the lower score becomes a false positive. A duplicate
  is not marked used, so it can still match another GT (a quirk of the script, kept).
- A prediction above the threshold with no GT (not even an ignored one) is a false positive unless the
  share of its points on void, group or too-small GT exceeds the threshold.
- AP integrates the PR curve over the unique scores with an artificial (R=0, P=1) end point.
  A class with GT but no prediction has AP 0; a class without GT has AP NaN and drops out of the means.

The script crashes when a class has GT and predictions but every prediction is ignored; mmdet3d
(following ScanNet PR #26) gives AP 0 there, and so do we.

The work per scene is vectorised (`_scene_stats`); only the greedy loop over (GT, prediction) pairs
above the threshold is Python, and there are about as many such pairs as predictions.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import NamedTuple, Sequence

import numpy as np

from oseg3d.eval.overlap import as_mask_stack, compact_ids, partition_intersections
from oseg3d.eval.parallel import scene_map
from oseg3d.scannet.labels import SCANNET20_IDS, SCANNET20_NAMES, scannet200_classes

__all__ = [
    "OVERLAPS", "MIN_REGION_SIZE", "OBJECT_ID", "SceneInstances", "SceneGT", "encode_gt_ids",
    "instance_classes", "evaluate_instances", "evaluate_instances_agnostic", "average_precision",
]

OVERLAPS = np.append(np.arange(0.5, 0.95, 0.05), 0.25)  # the script's array, float error included
MIN_REGION_SIZE = 100
OBJECT_ID = 3  # class id of "object" in class-agnostic mode (ESAM's instance_cat_agnostic_eval)
_ID_BASE = 1000  # gt id = 1000·class + instance, the benchmark's encoding

SceneGT = np.ndarray
"""Per-point benchmark GT ids of one scene, (N,) int: `1000·raw_class + instance`, 0 = none."""


class SceneInstances(NamedTuple):
    """Predicted instances of one scene.

    Attributes:
        masks: (n, N) bool, one row per instance over the scene's N points.
        labels: (n,) int raw class ids (nyu40 / ScanNet200 ids, as the GT ids use).
        scores: (n,) float confidences.
    """

    masks: np.ndarray
    labels: np.ndarray
    scores: np.ndarray


def encode_gt_ids(instance: np.ndarray, semantic: np.ndarray) -> np.ndarray:
    """Benchmark GT ids `1000·semantic + instance` from per-point instance and raw semantic ids.

    Points with instance ≤ 0 (unannotated) get 0 (void), as ScanNet's own export gives them.

    Args:
        instance: (N,) int instance ids, scene-global, 0 = unannotated; must be < 1000.
        semantic: (N,) int raw semantic ids (nyu40 for ScanNet, `id` column for ScanNet200).

    Returns:
        (N,) int64 gt ids.
    """
    instance = np.asarray(instance, np.int64)
    semantic = np.asarray(semantic, np.int64)
    if instance.shape != semantic.shape:
        raise ValueError(f"instance {instance.shape} and semantic {semantic.shape} differ in shape")
    if instance.size and instance.max() >= _ID_BASE:
        raise ValueError(f"instance ids must be < {_ID_BASE} for the benchmark encoding")
    return np.where(instance > 0, _ID_BASE * semantic + instance, 0)


def instance_classes(benchmark: str) -> tuple[tuple[int, ...], tuple[str, ...]]:
    """Raw ids and names of the instance ("thing") classes of a benchmark.

    Args:
        benchmark: "scannet" (18 classes: the 20 minus wall, floor) or "scannet200" (198: the 200 minus
            wall (1) and floor (3)).

    Returns:
        (class ids, class names), in benchmark order.
    """
    if benchmark == "scannet":
        return tuple(SCANNET20_IDS[2:]), tuple(SCANNET20_NAMES[2:])
    if benchmark == "scannet200":
        ids, names = scannet200_classes()
        keep = [i for i, c in enumerate(ids) if c not in (1, 3)]
        return tuple(ids[i] for i in keep), tuple(names[i] for i in keep)
    raise ValueError(f"unknown benchmark {benchmark!r}; expected 'scannet' or 'scannet200'")


@dataclass
class _SceneStats:
    """Threshold-independent matching data of one scene (kept predictions and GT instances only)."""

    pred_label: np.ndarray  # (n,) class index
    pred_score: np.ndarray  # (n,) float64
    pred_best_iou: np.ndarray  # (n,) max IoU with any same-class GT instance, ignored ones included
    pred_ignore_frac: np.ndarray  # (n,) share of points on void, group or too-small GT
    gt_label: np.ndarray  # (m,) class index of the evaluated (non-ignored) GT instances
    pair_gt: np.ndarray  # (k,) GT index into gt_label, sorted by (GT, prediction)
    pair_pred: np.ndarray  # (k,) prediction index
    pair_iou: np.ndarray  # (k,) float64 IoU of the pair (same class, evaluated GT, IoU > 0)


def _scene_stats(pred: SceneInstances, gt_ids: np.ndarray, class_ids: np.ndarray,
                 min_region_size: int) -> _SceneStats:
    """Counts and IoUs of one scene, as the script's `assign_instances_for_scan` collects them."""
    gt_ids = np.asarray(gt_ids, np.int64).ravel()
    masks = as_mask_stack(pred.masks, len(gt_ids))
    labels = np.asarray(pred.labels, np.int64).reshape(-1)
    scores = np.asarray(pred.scores, np.float64).reshape(-1)
    if not len(masks) == len(labels) == len(scores):
        raise ValueError(f"{len(masks)} masks, {len(labels)} labels, {len(scores)} scores")

    uniq, inverse, counts = compact_ids(gt_ids, return_counts=True)
    is_inst = (uniq != 0) & np.isin(uniq // _ID_BASE, class_ids)
    n_inst = int(is_inst.sum())
    # Region per point: GT instance index, or n_inst for void (every non-instance point is void).
    region = np.where(is_inst, np.cumsum(is_inst) - 1, n_inst)[inverse]
    inter = partition_intersections(masks, region, n_inst + 1)
    pred_count = inter.sum(1)

    keep = np.isin(labels, class_ids) & (pred_count >= min_region_size)
    inter, pred_count = inter[keep], pred_count[keep]
    void_inter, inter = inter[:, -1], inter[:, :-1]
    pred_label = np.searchsorted(class_ids, labels[keep])

    inst_id, inst_count = uniq[is_inst], counts[is_inst]
    inst_label = np.searchsorted(class_ids, inst_id // _ID_BASE)
    same = pred_label[:, None] == inst_label[None, :]
    inter = np.where(same, inter, 0)
    iou = inter / (inst_count[None, :] + pred_count[:, None] - inter)
    ignored = (inst_id < _ID_BASE) | (inst_count < min_region_size)
    # The script adds a group's intersection and a small GT's intersection separately (both if both).
    weight = (inst_id < _ID_BASE).astype(np.int64) + (inst_count < min_region_size)
    num_ignore = void_inter + inter @ weight

    with np.errstate(divide="ignore", invalid="ignore"):  # only with min_region_size 0 and empty masks
        ignore_frac = num_ignore / pred_count
    pair_gt, pair_pred = np.nonzero((inter.T > 0) & ~ignored[:, None])
    evaluated = np.flatnonzero(~ignored)
    return _SceneStats(
        pred_label=pred_label, pred_score=scores[keep],
        pred_best_iou=iou.max(1, initial=0.0), pred_ignore_frac=ignore_frac,
        gt_label=inst_label[evaluated],
        pair_gt=np.searchsorted(evaluated, pair_gt), pair_pred=pair_pred, pair_iou=iou[pair_pred, pair_gt],
    )


def _match_scene(s: _SceneStats, overlap: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One scene at one threshold: (labels, y_true, y_score) of its PR entries and hard FNs per GT.

    Returns:
        label (e,), true (e,) float, score (e,) float, and the labels of the unmatched GT instances.
    """
    above = s.pair_iou > overlap
    used = np.zeros(len(s.pred_label), bool)
    best: dict[int, float] = {}
    dup_gt, dup_score = [], []
    for g, p in zip(s.pair_gt[above].tolist(), s.pair_pred[above].tolist()):
        if used[p]:
            continue
        conf = float(s.pred_score[p])
        if g in best:
            dup_gt.append(g)
            dup_score.append(min(best[g], conf))
            best[g] = max(best[g], conf)
        else:
            best[g] = conf
            used[p] = True
    tp_gt = np.fromiter(best.keys(), np.int64, len(best))
    tp_score = np.fromiter(best.values(), np.float64, len(best))
    fp = (s.pred_best_iou <= overlap) & (s.pred_ignore_frac <= overlap)
    label = np.concatenate([s.gt_label[tp_gt], s.gt_label[np.asarray(dup_gt, np.int64)], s.pred_label[fp]])
    true = np.concatenate([np.ones(len(tp_gt)), np.zeros(len(dup_gt) + int(fp.sum()))])
    score = np.concatenate([tp_score, np.asarray(dup_score, np.float64), s.pred_score[fp]])
    missed = np.ones(len(s.gt_label), bool)
    missed[tp_gt] = False
    return label, true, score, s.gt_label[missed]


def average_precision(y_true: np.ndarray, y_score: np.ndarray, hard_false_negatives: int) -> float:
    """Area under the benchmark's PR curve.

    One PR point per unique score (all entries scoring at least that much are positives), plus the
    artificial (R=0, P=1) point; step widths from a [-0.5, 0, 0.5] convolution of the recalls.

    Args:
        y_true: (e,) 1 for a true positive entry, 0 for a false positive.
        y_score: (e,) confidence of each entry.
        hard_false_negatives: GT instances that no prediction matched.

    Returns:
        AP in [0, 1].
    """
    order = np.argsort(y_score)
    cum = np.cumsum(np.asarray(y_true, np.float64)[order])
    _, first = np.unique(np.asarray(y_score)[order], return_index=True)
    total = cum[-1] if len(cum) else 0.0
    before = np.where(first > 0, cum[first - 1] if len(cum) else 0.0, 0.0)  # trues scoring below
    tp = total - before
    fp = len(cum) - first - tp
    fn = before + hard_false_negatives
    precision = np.append(tp / (tp + fp), 1.0)
    recall = np.append(tp / (tp + fn), 0.0)
    widths = np.convolve(np.concatenate([recall[:1], recall, [0.0]]), [-0.5, 0, 0.5], "valid")
    return float(np.dot(precision, widths))


def _ap_matrix(stats: list[_SceneStats], num_classes: int) -> np.ndarray:
    """(num_classes, len(OVERLAPS)) AP: 0 with GT but no prediction, NaN without GT."""
    has_gt = np.zeros(num_classes, bool)
    has_pred = np.zeros(num_classes, bool)
    for s in stats:
        has_gt[s.gt_label] = True
        has_pred[s.pred_label] = True
    ap = np.where(has_gt, 0.0, np.nan)[:, None].repeat(len(OVERLAPS), 1)
    evaluated = np.flatnonzero(has_gt & has_pred)
    if not len(evaluated):
        return ap
    for oi, overlap in enumerate(OVERLAPS):
        label, true, score, missed = (np.concatenate(x) for x in zip(*(_match_scene(s, overlap) for s in stats)))
        missed = np.bincount(missed, minlength=num_classes)
        for c in evaluated:
            sel = label == c
            ap[c, oi] = average_precision(true[sel], score[sel], int(missed[c]))
    return ap


def _summarise(ap: np.ndarray, class_names: Sequence[str]) -> dict:
    """The benchmark's `compute_averages`: means over classes (NaN skipped) and per-class values."""
    but25 = ~np.isclose(OVERLAPS, 0.25)
    o50, o25 = np.isclose(OVERLAPS, 0.5), np.isclose(OVERLAPS, 0.25)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices: no GT at all
        # Threshold-major, as the script's fancy index lays it out, so the sums run in the same order.
        out = {
            "all_ap": float(np.nanmean(np.ascontiguousarray(ap[:, but25].T))),
            "all_ap_50%": float(np.nanmean(ap[:, o50].T)),
            "all_ap_25%": float(np.nanmean(ap[:, o25].T)),
        }
    out["classes"] = {
        name: {"ap": float(np.mean(ap[c, but25])), "ap50%": float(ap[c, o50][0]), "ap25%": float(ap[c, o25][0])}
        for c, name in enumerate(class_names)
    }
    return out


def evaluate_instances(preds: Sequence[SceneInstances], gts: Sequence[SceneGT], class_ids: Sequence[int],
                       class_names: Sequence[str], min_region_size: int = MIN_REGION_SIZE, workers: int = 1) -> dict:
    """ScanNet instance AP over a set of scenes.

    Args:
        preds: per scene, predicted (masks (n, N) bool, labels (n,) raw class ids, scores (n,)).
        gts: per scene, (N,) benchmark gt ids `1000·raw_class + instance` (see `encode_gt_ids`).
        class_ids: raw ids of the evaluated classes (e.g. `instance_classes("scannet")[0]`).
        class_names: one name per class id.
        min_region_size: GT instances and predictions with fewer points are ignored / dropped.
        workers: processes for the per-scene work (see `scene_map`).

    Returns:
        {"all_ap", "all_ap_50%", "all_ap_25%": float, "classes": {name: {"ap", "ap50%", "ap25%"}}};
        "all_ap" averages the thresholds 0.5..0.9; classes without GT are NaN and skipped in the means.
    """
    if len(preds) != len(gts):
        raise ValueError(f"{len(preds)} predicted scenes but {len(gts)} GT scenes")
    if len(class_ids) != len(class_names):
        raise ValueError(f"{len(class_ids)} class ids but {len(class_names)} names")
    order = np.argsort(class_ids)
    sorted_ids = np.asarray(class_ids, np.int64)[order]
    stats = scene_map(lambda i: _scene_stats(SceneInstances(*preds[i]), gts[i], sorted_ids, min_region_size),
                      len(preds), workers)
    ap_sorted = _ap_matrix(stats, len(class_ids))
    ap = np.empty_like(ap_sorted)
    ap[order] = ap_sorted  # back to the caller's class order
    return _summarise(ap, class_names)


def evaluate_instances_agnostic(preds: Sequence[SceneInstances], gts: Sequence[SceneGT],
                                class_ids: Sequence[int], min_region_size: int = MIN_REGION_SIZE,
                                workers: int = 1) -> dict:
    """Class-agnostic AP (ESAM's `instance_cat_agnostic_eval`): one class "object".

    Every GT instance of a class in `class_ids` becomes an "object" instance (its instance number kept,
    so instance numbers must be unique within a scene, as ScanNet's object ids are); other points are
    void. Every prediction is an "object" whatever its label.

    Args:
        preds: per scene (masks, labels, scores); labels are ignored.
        gts: per scene benchmark gt ids.
        class_ids: raw ids of the thing classes that count as objects (e.g. the 198 of ScanNet200).
        min_region_size: as in `evaluate_instances`.
        workers: as in `evaluate_instances`.

    Returns:
        As `evaluate_instances`, with the single class "object".
    """
    ids = np.asarray(class_ids, np.int64)

    def agnostic_pred(p) -> SceneInstances:
        p = SceneInstances(*p)
        return p._replace(labels=np.full(len(np.asarray(p.labels).reshape(-1)), OBJECT_ID))

    def agnostic_gt(g) -> np.ndarray:  # every thing instance an "object" (instance number kept), the rest void
        g = np.asarray(g, np.int64)
        return np.where((g != 0) & np.isin(g // _ID_BASE, ids), OBJECT_ID * _ID_BASE + g % _ID_BASE, 0)

    return evaluate_instances(_Lazy(preds, agnostic_pred), _Lazy(gts, agnostic_gt), (OBJECT_ID,), ("object",),
                              min_region_size, workers)


class _Lazy:
    """`fn` over a sequence, one scene at a time on access (a whole set converted at once is GBs)."""

    def __init__(self, items: Sequence, fn):
        self.items, self.fn = items, fn

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        return self.fn(self.items[i])
