"""Instance coverage and precision / recall as ASIS defines them (mCov, mWCov, mPrec, mRec).

Reference: ASIS `models/ASIS/eval_iou_accuracy.py` (reference/esam.md §4.3). Per semantic class c:

- A GT instance's class is the mode of its points' semantic labels (ties: the smallest id, as
  `scipy.stats.mode`); a predicted instance's class is its predicted label (`mode_labels` gives the
  ASIS rule from per-point predictions instead).
- Coverage, per room with GT of class c: each GT instance takes its best IoU with the room's predicted
  instances of class c (0 without any). Cov = their mean; WCov = their mean weighted by GT point count.
  MUCov_c / MWCov_c = mean over those rooms; mCov / mWCov = mean over classes.
- Precision / recall at IoU ≥ 0.5, no one-to-one matching: a prediction of class c is a TP when its best
  IoU with a GT instance of class c reaches 0.5; Prec_c = ΣTP / (ΣTP + ΣFP). A GT instance is recalled when
  its best IoU with a prediction of class c reaches 0.5; Rec_c = Σrecalled / #GT_c. Sums over all rooms.

Deviation from ASIS, on purpose: ASIS's recall is ΣTP / #GT, counting predictions, so duplicates push it
past 100 % — on unsuppressed single-view output (top-100, no score threshold) we saw 327 %. Counting each
GT once keeps recall a recall; both agree whenever no two predictions hit the same GT instance.

ASIS averages classes with `np.mean`, which turns a class without GT (or without predictions, for
precision) into a NaN total. ScanNet scenes rarely hold every class, so the class means here skip NaN
(identical to ASIS whenever every class has GT and predictions). IoUs use all points of the room, no
void handling, as ASIS. GT instance id ≤ 0 means "no instance".
"""
from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np

from oseg3d.eval.instance_ap import OBJECT_ID, SceneInstances
from oseg3d.eval.overlap import as_mask_stack, compact_ids, partition_intersections
from oseg3d.eval.parallel import scene_map

__all__ = ["mode_labels", "evaluate_coverage", "evaluate_coverage_agnostic"]

IOU_THRESHOLD = 0.5


def _group_mode(group: np.ndarray, values: np.ndarray, num_groups: int) -> np.ndarray:
    """Most frequent value per group (ties: the smallest value); groups without points get -1."""
    uniq, val_idx = compact_ids(values)
    counts = np.bincount(group * len(uniq) + val_idx, minlength=num_groups * len(uniq))
    counts = counts.reshape(num_groups, len(uniq))
    return np.where(counts.any(1), uniq[counts.argmax(1)] if len(uniq) else -1, -1)


def mode_labels(masks: np.ndarray, point_labels: np.ndarray) -> np.ndarray:
    """ASIS's class of a predicted instance: the mode of the per-point semantic prediction on its mask.

    Args:
        masks: (n, N) bool instance masks.
        point_labels: (N,) int per-point semantic prediction.

    Returns:
        (n,) int64 label per mask (ties: smallest; -1 for an empty mask).
    """
    point_labels = np.asarray(point_labels, np.int64)
    masks = as_mask_stack(masks, len(point_labels))
    rows, cols = np.nonzero(masks)
    return _group_mode(rows, point_labels[cols], len(masks))


def _room(masks: np.ndarray, labels: np.ndarray, instance: np.ndarray, semantic: np.ndarray,
          class_ids: np.ndarray, agnostic: bool):
    """IoU matrix and classes of one room: (iou (n, m), pred class (n,), gt class (m,), gt size (m,))."""
    instance = np.asarray(instance, np.int64).ravel()
    semantic = np.asarray(semantic, np.int64).ravel()
    masks = as_mask_stack(masks, len(instance))
    has = instance > 0
    ids, inv = compact_ids(instance[has])
    gt_class = _group_mode(inv, semantic[has], len(ids))
    keep = np.isin(gt_class, class_ids)
    region = np.full(len(instance), -1, np.int64)
    region[has] = np.where(keep, np.cumsum(keep) - 1, -1)[inv]
    gt_size = np.bincount(region[region >= 0], minlength=int(keep.sum()))
    inter = partition_intersections(masks, region, len(gt_size))
    iou = inter / (masks.sum(1)[:, None] + gt_size[None, :] - inter)
    gt_class = gt_class[keep]
    pred_class = np.asarray(labels, np.int64).reshape(-1)
    if agnostic:
        gt_class = np.full(len(gt_class), OBJECT_ID)
        pred_class = np.full(len(pred_class), OBJECT_ID)
    return iou, pred_class, gt_class, gt_size


def _evaluate(preds, gt_instances, gt_semantics, class_ids, class_names, agnostic, workers) -> dict:
    if not len(preds) == len(gt_instances) == len(gt_semantics):
        raise ValueError(f"{len(preds)} predicted rooms, {len(gt_instances)} / {len(gt_semantics)} GT rooms")
    eval_ids = np.array((OBJECT_ID,) if agnostic else class_ids, np.int64)
    cov = [[] for _ in eval_ids]
    wcov = [[] for _ in eval_ids]
    tp, fp, recalled, n_gt = (np.zeros(len(eval_ids), np.int64) for _ in range(4))
    ids = np.asarray(class_ids)
    rooms = scene_map(lambda i: _room(preds[i][0], preds[i][1], gt_instances[i], gt_semantics[i], ids, agnostic),
                      len(preds), workers)
    for iou, pred_class, gt_class, gt_size in rooms:
        present = np.union1d(gt_class, pred_class)
        for c in np.flatnonzero(np.isin(eval_ids, present)):  # classes absent from the room add nothing
            g, p = gt_class == eval_ids[c], pred_class == eval_ids[c]
            n_gt[c] += g.sum()
            if g.any():
                best = iou[np.ix_(p, g)].max(0, initial=0.0)
                recalled[c] += (best >= IOU_THRESHOLD).sum()
                cov[c].append(best.mean())
                wcov[c].append((best * gt_size[g]).sum() / gt_size[g].sum())
            if p.any():
                hit = iou[np.ix_(p, g)].max(1, initial=-1.0) >= IOU_THRESHOLD
                tp[c] += hit.sum()
                fp[c] += (~hit).sum()
    with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)  # empty means: NaN on purpose
        per = {
            "cov": np.array([np.mean(x) if x else np.nan for x in cov]),
            "wcov": np.array([np.mean(x) if x else np.nan for x in wcov]),
            "prec": tp / (tp + fp),
            "rec": recalled / n_gt,
        }
        out = {f"m{k}": float(np.nanmean(v)) for k, v in per.items()}
    names = ("object",) if agnostic else tuple(class_names)
    out["classes"] = {name: {k: float(v[c]) for k, v in per.items()} for c, name in enumerate(names)}
    return out


def evaluate_coverage(preds: Sequence[SceneInstances], gt_instances: Sequence[np.ndarray],
                      gt_semantics: Sequence[np.ndarray], class_ids: Sequence[int],
                      class_names: Sequence[str], workers: int = 1) -> dict:
    """mCov, mWCov, mPrec, mRec over rooms (ASIS definitions).

    Args:
        preds: per room (masks (n, N) bool, labels (n,) raw class ids[, scores — unused]).
        gt_instances: per room (N,) int instance id per point, ≤ 0 = none.
        gt_semantics: per room (N,) int raw semantic id per point.
        class_ids: raw ids of the evaluated classes; GT instances of other classes are left out.
        class_names: one name per class id.
        workers: processes for the per-room work (see `scene_map`).

    Returns:
        {"mcov", "mwcov", "mprec", "mrec": float, "classes": {name: {"cov", "wcov", "prec", "rec"}}};
        a class without GT (or without predictions, for "prec") is NaN and skipped in the means.
    """
    if len(class_ids) != len(class_names):
        raise ValueError(f"{len(class_ids)} class ids but {len(class_names)} names")
    return _evaluate(preds, gt_instances, gt_semantics, class_ids, class_names, False, workers)


def evaluate_coverage_agnostic(preds: Sequence[SceneInstances], gt_instances: Sequence[np.ndarray],
                               gt_semantics: Sequence[np.ndarray], class_ids: Sequence[int], workers: int = 1) -> dict:
    """Class-agnostic mCov / mWCov / mPrec / mRec: every GT instance of `class_ids` and every prediction
    is one class "object" (the GT class is still the mode, so instances of other classes stay out).

    Returns:
        As `evaluate_coverage`, with the single class "object".
    """
    return _evaluate(preds, gt_instances, gt_semantics, class_ids, ("object",), True, workers)
