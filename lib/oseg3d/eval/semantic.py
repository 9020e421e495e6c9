"""Semantic segmentation metrics as the ScanNet benchmark (`evaluate_semantic_label.py`) computes them.

One confusion matrix is accumulated over all scenes (not a mean of per-scene IoUs):

- Points whose GT is the ignore label (or outside 0..C-1) are skipped entirely: a prediction there is no
  false positive.
- A prediction outside 0..C-1 on a valid GT point counts as a miss (FN of the GT class, FP of nothing),
  like the benchmark's UNKNOWN_ID column.
- IoU_c = TP / (TP + FP + FN); NaN when the class has neither GT nor predictions (denominator 0). A class
  with predictions but no GT has IoU 0 and counts in the mean, as in the benchmark and mmdet3d's
  `seg_eval`. mIoU = mean over the non-NaN classes.
- Overall accuracy = correct / valid GT points; class accuracy = mean per-class recall (mmdet3d's
  `acc_cls`).

Labels are training class indices 0..C-1 (`oseg3d.scannet.labels.class_mapping` maps raw ids; its
ignore index is C).
"""
from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np

__all__ = ["ConfusionMatrix", "semantic_metrics"]


class ConfusionMatrix:
    """Point counts (GT class × predicted class) accumulated over scenes.

    Args:
        num_classes: C, the number of valid classes.
        ignore_index: GT label to skip (any GT outside 0..C-1 is skipped as well).
    """

    def __init__(self, num_classes: int, ignore_index: int | None = None):
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        # Column C collects predictions outside 0..C-1 ("unknown").
        self.counts = np.zeros((num_classes, num_classes + 1), np.int64)

    def update(self, pred: np.ndarray, gt: np.ndarray) -> None:
        """Add one scene (or frame): per-point predicted and GT labels of the same shape."""
        pred = np.asarray(pred, np.int64).ravel()
        gt = np.asarray(gt, np.int64).ravel()
        if pred.shape != gt.shape:
            raise ValueError(f"prediction has {pred.size} points, GT {gt.size}")
        c = self.num_classes
        valid = (gt >= 0) & (gt < c)
        if self.ignore_index is not None:
            valid &= gt != self.ignore_index
        p = pred[valid]
        p = np.where((p >= 0) & (p < c), p, c)
        self.counts += np.bincount(gt[valid] * (c + 1) + p, minlength=c * (c + 1)).reshape(c, c + 1)

    def compute(self, class_names: Sequence[str] | None = None) -> dict:
        """Metrics of everything added so far.

        Args:
            class_names: C names for the per-class entries (default "0", "1", ...).

        Returns:
            {"miou", "acc", "acc_cls": float, "classes": {name: {"iou", "acc"}},
             "confusion": (C, C) int64 GT × prediction counts, "unknown": (C,) int64 predictions outside
             0..C-1 per GT class}.
        """
        c = self.num_classes
        names = [str(i) for i in range(c)] if class_names is None else list(class_names)
        if len(names) != c:
            raise ValueError(f"{len(names)} class names for {c} classes")
        tp = np.diag(self.counts).astype(np.float64)
        gt_total = self.counts.sum(1)
        fp = self.counts[:, :c].sum(0) - tp
        with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN means: nothing evaluated yet
            iou = tp / (gt_total + fp)  # gt_total = TP + FN
            recall = tp / gt_total
            out = {
                "miou": float(np.nanmean(iou)),
                "acc": float(tp.sum() / gt_total.sum()),
                "acc_cls": float(np.nanmean(recall)),
            }
        out["classes"] = {n: {"iou": float(iou[i]), "acc": float(recall[i])} for i, n in enumerate(names)}
        out["confusion"] = self.counts[:, :c].copy()
        out["unknown"] = self.counts[:, c].copy()
        return out


def semantic_metrics(preds: Sequence[np.ndarray], gts: Sequence[np.ndarray], num_classes: int,
                     ignore_index: int | None = None, class_names: Sequence[str] | None = None) -> dict:
    """mIoU, accuracy and the confusion matrix over scenes (see `ConfusionMatrix.compute`).

    Args:
        preds: per scene (N,) predicted class indices.
        gts: per scene (N,) GT class indices; `ignore_index` / out-of-range values are skipped.
        num_classes: C.
        ignore_index: GT label to skip.
        class_names: optional C names.

    Returns:
        The dict of `ConfusionMatrix.compute`.
    """
    if len(preds) != len(gts):
        raise ValueError(f"{len(preds)} predicted scenes but {len(gts)} GT scenes")
    cm = ConfusionMatrix(num_classes, ignore_index)
    for p, g in zip(preds, gts):
        cm.update(p, g)
    return cm.compute(class_names)
