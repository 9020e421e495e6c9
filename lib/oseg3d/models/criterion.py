"""Training losses of the query decoder (esam.md §3.6): instance, box and semantic terms per prediction.

For each frame and each of the decoder's predictions, queries are matched to objects (matcher.py;
re-matched per prediction with `iter_matcher`), then:

- cls: cross-entropy over all queries; matched ones target their object's class, the rest the
  no-object class, down-weighted to 0.1 (most queries are superpoints that are not an object's pick).
- bce, dice: on the matched (mask, object mask) pairs, against superpoint or point masks depending on
  the level the prediction was made at.
- bbox: 1 − axis-aligned 3D IoU of the matched (box, object box) pairs, when boxes are predicted and
  the targets have them (online/MV training).
- sem (final prediction only): each query's semantic logits (no-object column dropped) against the
  majority class of its superpoint, ignoring `num_semantic`.

Terms are averaged over the frames of the batch that define them (cls: frames with queries; mask and
box terms: frames with at least one matched pair; sem: frames with a non-ignored target).
A layer where no frame defines a term gives an exact zero that is still connected to the predictions
(ESAM issue #17: its criterion took the mean of an empty tensor there and trained on NaN).

ESAM's normalisation quirk (`fix_dice_loss_weight` + `fix_mean_loss`, from OneFormer3D) makes the final
dice ≈ 4 × the mean and the aux dice 4·mean/B. We do not copy it: `dice_scale` multiplies the final-layer
dice for a caller who wants it (ESAM's effective value is 4), aux layers always use the plain mean.
ESAM also divides the box loss by the batch size rather than by the frames that have matches.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from oseg3d.models.matcher import match
from oseg3d.models.targets import FrameTargets

__all__ = ["Criterion", "aligned_box_iou", "dice_loss"]


def aligned_box_iou(a: Tensor, b: Tensor, eps: float = 1e-6) -> Tensor:
    """IoU of paired axis-aligned 3D boxes.

    Args:
        a, b: (N, 6) boxes (cx, cy, cz, dx, dy, dz).
        eps: floor of the union volume.

    Returns:
        (N,) IoU.
    """
    lo = torch.maximum(a[:, :3] - a[:, 3:] / 2, b[:, :3] - b[:, 3:] / 2)
    hi = torch.minimum(a[:, :3] + a[:, 3:] / 2, b[:, :3] + b[:, 3:] / 2)
    inter = (hi - lo).clamp_min(0).prod(1)
    union = a[:, 3:].prod(1) + b[:, 3:].prod(1) - inter
    return inter / union.clamp_min(eps)


def dice_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean over rows of 1 − (2|p∩t| + 1)/(|p| + |t| + 1), p = sigmoid(logits); (M, n) inputs."""
    p = logits.sigmoid()
    return (1 - (2 * (p * targets).sum(1) + 1) / (p.sum(1) + targets.sum(1) + 1)).mean()


def _zero(tensors: list[Tensor]) -> Tensor:
    """0.0 with a grad_fn reaching `tensors` (zero gradient), so backward and DDP see the parameters.

    Summing an empty slice avoids 0·x, which is NaN where x is inf (e.g. an exp'd box size).
    """
    return sum(t.flatten()[:0].sum().float() for t in tensors)


def _mean(terms: list[Tensor], fallback: list[Tensor]) -> Tensor:
    return torch.stack(terms).mean() if terms else _zero(fallback)


class Criterion(nn.Module):
    """Instance + box + semantic losses of every decoder prediction.

    Args:
        num_classes: instance classes (1 = class-agnostic: every present object gets class 0).
        num_semantic: semantic classes; `num_semantic` is the semantic ignore index.
        loss_weight: weights of (cls, bce, dice, score, bbox); score is unused (no objectness head).
        non_object_weight: class weight of the no-object class in the cls cross-entropy.
        sem_weight: weight of the semantic loss.
        iter_matcher: re-match at every prediction; else reuse the final prediction's matches.
        dice_scale: extra factor on the final-layer dice (ESAM's quirk is 4; we default to 1).
    """

    def __init__(self, num_classes: int, num_semantic: int, loss_weight=(0.5, 1.0, 1.0, 0.5, 0.5),
                 non_object_weight: float = 0.1, sem_weight: float = 0.5, iter_matcher: bool = True,
                 dice_scale: float = 1.0):
        super().__init__()
        self.num_classes = num_classes
        self.num_semantic = num_semantic
        self.loss_weight = tuple(loss_weight)
        self.sem_weight = sem_weight
        self.iter_matcher = iter_matcher
        self.dice_scale = dice_scale
        self.register_buffer("class_weight", torch.tensor([1.0] * num_classes + [non_object_weight]),
                             persistent=False)

    def _labels(self, t: FrameTargets) -> Tensor:
        if self.num_classes == 1:  # class-agnostic: any present object is class 0
            return torch.where(t.inst_labels >= 0, 0, -1)
        return t.inst_labels

    def _layer_losses(self, layer: dict, targets: list[FrameTargets], labels: list[Tensor],
                      query_masks: list[Tensor], prefix: str, dice_scale: float,
                      indices: list[tuple[Tensor, Tensor]] | None = None):
        """Losses of one prediction; returns (dict of weighted terms, the matches used)."""
        w_cls, w_bce, w_dice, _, w_bbox = self.loss_weight
        sp_level = layer["mask_mode"] == "SP"
        gt_masks = [t.inst_sp_masks if sp_level else t.inst_p_masks for t in targets]
        if indices is None:
            indices = [match(c, m, lab, g, qm) for c, m, lab, g, qm in
                       zip(layer["cls_preds"], layer["masks"], labels, gt_masks, query_masks)]
        boxes = layer.get("bboxes")
        use_box = boxes is not None and any(t.boxes is not None for t in targets)
        cls_terms, bce_terms, dice_terms, box_terms = [], [], [], []
        for f, (q_idx, g_idx) in enumerate(indices):
            cls_pred = layer["cls_preds"][f].float()
            if len(cls_pred):
                # a query picked by two objects gets one of their labels (same label when class-agnostic)
                cls_target = cls_pred.new_full((len(cls_pred),), self.num_classes, dtype=torch.long)
                cls_target[q_idx] = labels[f][g_idx]
                weight = self.class_weight.to(cls_pred.device)
                cls_terms.append(F.cross_entropy(cls_pred, cls_target, weight=weight))
            if len(q_idx) == 0:
                continue
            mask, gt = layer["masks"][f][q_idx].float(), gt_masks[f][g_idx].float()
            bce_terms.append(F.binary_cross_entropy_with_logits(mask, gt))
            dice_terms.append(dice_loss(mask, gt))
            if use_box and targets[f].boxes is not None:
                iou = aligned_box_iou(boxes[f][q_idx].float(), targets[f].boxes[g_idx].float())
                box_terms.append((1 - iou).mean())
        out = {
            prefix + "loss_cls": w_cls * _mean(cls_terms, layer["cls_preds"]),
            prefix + "loss_bce": w_bce * _mean(bce_terms, layer["masks"]),
            prefix + "loss_dice": w_dice * dice_scale * _mean(dice_terms, layer["masks"]),
        }
        if use_box:
            out[prefix + "loss_bbox"] = w_bbox * _mean(box_terms, boxes)
        return out, indices

    def _semantic_loss(self, sem_preds: list[Tensor], targets: list[FrameTargets],
                       query_ids: list[Tensor]) -> Tensor:
        terms = []
        for sem, t, q in zip(sem_preds, targets, query_ids):
            target = t.sp_sem[q]
            if bool((target != self.num_semantic).any()):  # all-ignored CE is 0/0 = NaN
                # the extra "no object" semantic column is not a class any superpoint can have
                terms.append(F.cross_entropy(sem[:, :-1].float(), target, ignore_index=self.num_semantic))
        return self.sem_weight * _mean(terms, sem_preds)

    def forward(self, pred: dict, targets: list[FrameTargets],
                query_ids: list[Tensor] | None = None) -> dict[str, Tensor]:
        """Loss terms of a decoder output.

        Args:
            pred: QueryDecoder output (final prediction + `aux_outputs`).
            targets: per frame FrameTargets, on the predictions' device.
            query_ids: per frame (n_q,) long superpoints used as queries; None = all superpoints.

        Returns:
            Weighted terms `loss_cls`, `loss_bce`, `loss_dice`, `loss_bbox` (only when boxes are predicted
            and some target has boxes), `loss_sem`, and `aux{i}_loss_*` (no sem) per aux prediction;
            the training loss is their sum.
        """
        if query_ids is None:
            query_ids = [torch.arange(t.inst_sp_masks.shape[1], device=t.inst_sp_masks.device) for t in targets]
        labels = [self._labels(t) for t in targets]
        query_masks = [t.inst_sp_masks[:, q] for t, q in zip(targets, query_ids)]
        losses, indices = self._layer_losses(pred, targets, labels, query_masks, "", self.dice_scale)
        losses["loss_sem"] = self._semantic_loss(pred["sem_preds"], targets, query_ids)
        for i, aux in enumerate(pred.get("aux_outputs") or []):
            reuse = None if self.iter_matcher else indices
            losses.update(self._layer_losses(aux, targets, labels, query_masks, f"aux{i}_", 1.0, reuse)[0])
        return losses
