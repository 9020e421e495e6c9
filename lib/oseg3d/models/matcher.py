"""Query-to-object matching of ESAM (its SparseMatcher with topk=1, esam.md §3.6).

Queries are superpoints, so a query can only stand for an object its own superpoint lies in: the cost of
every other (query, object) pair is set to 1e8. Each object then takes its single cheapest allowed
query. This is a per-object argmin, not a Hungarian assignment:

- two objects may pick the same query (possible only when the query's superpoint is inside both
  masks, e.g. overlapping point-level masks). We keep that behaviour; the criterion then gives that
  query one class target and a mask loss towards each object.
- an object with no allowed query (none of the sampled queries lies inside it) stays unmatched.
- ties go to the lowest query index. (ESAM keeps costs strictly below the second-smallest one, so an
  exact tie there matches nothing; with float costs of different queries this practically never occurs.)

Cost = 0.5·(−softmax probability of the object's class) + 1.0·mask BCE + 1.0·mask Dice, all pairwise
and vectorised, computed in float32 without autograd.

`batched_match` matches all frames of a batch at once on zero-padded tensors (the criterion's path: a
fixed number of kernels and no host synchronisation whatever the frame count); `match` and
`match_costs` are its one-frame forms.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["batched_match", "match", "match_costs"]

_BLOCKED = 1e8  # ESAM's "infinite" cost for a query outside the object


def _batched_costs(cls_pred: Tensor, mask_pred: Tensor, gt_labels: Tensor, gt_masks: Tensor,
                   unit_mask: Tensor | None, weights: tuple[float, float, float]) -> Tensor:
    """(B, n_q, K) float32 cost of every query against every object of the same frame.

    BCE(x, t) = t·softplus(−x) + (1 − t)·softplus(x) and the Dice overlaps are matrix products over
    the units. Padded units (unit_mask 0) hold logit 0 and no target: they are kept out of the
    (1 − t) factor, the predicted mask's size and the BCE mean's denominator.
    """
    # float32 even under autocast: the BCE sums over 20 k points and the 1e8 sentinel overflow fp16
    with torch.autocast(device_type=mask_pred.device.type, enabled=False):
        n_q, k = mask_pred.shape[1], gt_labels.shape[1]
        prob = cls_pred.float().softmax(-1).gather(2, gt_labels.clamp_min(0)[:, None, :].expand(-1, n_q, k))
        logits, targets = mask_pred.float(), gt_masks.float()
        t_rows = targets.transpose(1, 2)
        if unit_mask is None:
            off, n_units = 1 - targets, logits.shape[2]
        else:
            unit_mask = unit_mask.float()
            off, n_units = unit_mask[:, None, :] - targets, unit_mask.sum(1).clamp_min(1)[:, None, None]
        # one (B, n_q, n_units) buffer for softplus(x), softplus(−x) = softplus(x) − x and sigmoid(x) in turn:
        # a batch of point-level masks is ~10^8 floats
        buf = F.softplus(logits)
        bce = buf @ off.transpose(1, 2)
        bce = (buf.sub_(logits) @ t_rows + bce) / n_units
        p = torch.sigmoid(logits, out=buf)
        p_size = p.sum(2, keepdim=True) if unit_mask is None else p @ unit_mask[:, :, None]
        dice = 1 - (2 * (p @ t_rows) + 1) / (p_size + targets.sum(2)[:, None, :] + 1)
        w_cls, w_bce, w_dice = weights
        return -w_cls * prob + w_bce * bce + w_dice * dice


@torch.no_grad()
def match_costs(cls_pred: Tensor, mask_pred: Tensor, gt_labels: Tensor, gt_masks: Tensor,
                weights: tuple[float, float, float] = (0.5, 1.0, 1.0)) -> Tensor:
    """Matching cost of every query against every object, before the query_masks restriction.

    Args:
        cls_pred: (n_q, C + 1) class logits (last = no object).
        mask_pred: (n_q, n_units) mask logits over superpoints or points.
        gt_labels: (K,) long object classes; −1 (absent) is allowed, its column is meaningless.
        gt_masks: (K, n_units) bool object masks at the same level as mask_pred.
        weights: (class, BCE, Dice) cost weights.

    Returns:
        (n_q, K) float32 cost.
    """
    return _batched_costs(cls_pred[None], mask_pred[None], gt_labels[None], gt_masks[None], None, weights)[0]


@torch.no_grad()
def batched_match(cls_pred: Tensor, mask_pred: Tensor, gt_labels: Tensor, gt_masks: Tensor,
                  query_masks: Tensor, unit_mask: Tensor | None = None,
                  weights: tuple[float, float, float] = (0.5, 1.0, 1.0)) -> tuple[Tensor, Tensor]:
    """`match` for B zero-padded frames at once, without host synchronisation.

    Args:
        cls_pred: (B, n_q, C + 1) class logits; padded queries are excluded by query_masks.
        mask_pred: (B, n_q, n_units) mask logits, 0 on padded units.
        gt_labels: (B, K) long object classes, −1 = absent (or padding).
        gt_masks: (B, K, n_units) bool or 0/1 object masks, 0 on padded units.
        query_masks: (B, K, n_q) bool, query q's superpoint is inside object k (False for padding).
        unit_mask: (B, n_units) bool or 0/1, the frame's own units; None = no padded units.
        weights: (class, BCE, Dice) cost weights.

    Returns:
        (query_idx, matched): (B, K) long, object k's cheapest allowed query (meaningless where not
        matched), and (B, K) bool, object k is present and has an allowed query.
    """
    allowed = query_masks.bool() & ((gt_labels >= 0) & gt_masks.bool().any(2))[:, :, None]
    matched = allowed.any(2)
    if mask_pred.shape[1] == 0:  # argmin over no query is an error
        return torch.zeros_like(matched, dtype=torch.long), matched
    cost = _batched_costs(cls_pred, mask_pred, gt_labels, gt_masks, unit_mask, weights).transpose(1, 2)
    return cost.masked_fill(~allowed, _BLOCKED).argmin(2), matched


@torch.no_grad()
def match(cls_pred: Tensor, mask_pred: Tensor, gt_labels: Tensor, gt_masks: Tensor, query_masks: Tensor,
          weights: tuple[float, float, float] = (0.5, 1.0, 1.0)) -> tuple[Tensor, Tensor]:
    """Give each present object its cheapest query among those lying inside it (one frame).

    Args:
        cls_pred: (n_q, C + 1) class logits.
        mask_pred: (n_q, n_units) mask logits.
        gt_labels: (K,) long object classes, −1 = absent from this frame.
        gt_masks: (K, n_units) bool object masks; an all-False row is an absent object.
        query_masks: (K, n_q) bool, query q's superpoint is inside object k.
        weights: (class, BCE, Dice) cost weights.

    Returns:
        (query_idx, gt_idx): (M,) long each, matched pairs sorted by gt_idx. M ≤ number of present
        objects; query_idx may repeat (see the module docstring).
    """
    query_idx, matched = batched_match(cls_pred[None], mask_pred[None], gt_labels[None], gt_masks[None],
                                       query_masks[None], weights=weights)
    gt_idx = torch.nonzero(matched[0]).squeeze(1)  # a host sync; the criterion uses batched_match
    return query_idx[0][gt_idx], gt_idx
