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
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["match", "match_costs"]

_BLOCKED = 1e8  # ESAM's "infinite" cost for a query outside the object


def _pairwise_bce(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean sigmoid BCE of every mask against every target, (n_q, K).

    BCE(x, t) = t·softplus(−x) + (1 − t)·softplus(x), so both terms are matrix products.
    """
    pos = F.softplus(-logits) @ targets.T
    neg = F.softplus(logits) @ (1 - targets).T
    return (pos + neg) / logits.shape[1]


def _pairwise_dice(logits: Tensor, targets: Tensor) -> Tensor:
    """Dice loss 1 − (2|p∩t| + 1)/(|p| + |t| + 1) of every mask against every target, (n_q, K)."""
    p = logits.sigmoid()
    inter = p @ targets.T
    return 1 - (2 * inter + 1) / (p.sum(1)[:, None] + targets.sum(1)[None, :] + 1)


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
    # float32 even under autocast: the BCE sums over 20 k points and the 1e8 sentinel overflow fp16
    with torch.autocast(device_type=mask_pred.device.type, enabled=False):
        prob = cls_pred.float().softmax(-1)[:, gt_labels.clamp_min(0)]
        logits, targets = mask_pred.float(), gt_masks.float()
        w_cls, w_bce, w_dice = weights
        return -w_cls * prob + w_bce * _pairwise_bce(logits, targets) + w_dice * _pairwise_dice(logits, targets)


@torch.no_grad()
def match(cls_pred: Tensor, mask_pred: Tensor, gt_labels: Tensor, gt_masks: Tensor, query_masks: Tensor,
          weights: tuple[float, float, float] = (0.5, 1.0, 1.0)) -> tuple[Tensor, Tensor]:
    """Give each present object its cheapest query among those lying inside it.

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
    device = mask_pred.device
    allowed = query_masks.bool() & ((gt_labels >= 0) & gt_masks.any(1))[:, None]
    has_query = allowed.any(1)
    if not bool(has_query.any()):
        empty = torch.zeros(0, dtype=torch.long, device=device)
        return empty, empty
    cost = match_costs(cls_pred, mask_pred, gt_labels, gt_masks, weights).T  # (K, n_q)
    cost = cost.masked_fill(~allowed, _BLOCKED)
    gt_idx = torch.nonzero(has_query).squeeze(1)
    return cost[gt_idx].argmin(1), gt_idx
