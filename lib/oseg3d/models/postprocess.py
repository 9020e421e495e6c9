"""Per-frame post-processing: decoder outputs of one frame → scored, de-duplicated binary instance masks.

Every superpoint is a query, so a frame has hundreds of queries and many near-duplicate masks. ESAM
keeps the top-20 (query, class) pairs, rescales their class score by mask confidence, decays the
scores of overlapping masks with matrix NMS, and drops weak or tiny masks (esam.md §3.8). The kept
masks, with `query_index` into the decoder outputs, feed the online merger.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["FramePrediction", "postprocess_frame", "matrix_nms"]


@dataclass
class FramePrediction:
    """Instances predicted in one frame, sorted by descending score.

    Attributes:
        masks: (n, n_pts) bool.
        labels: (n,) long instance class (0 for class-agnostic).
        scores: (n,) float.
        query_index: (n,) long row of the decoder outputs (queries, boxes, sem logits) of each instance.
    """

    masks: torch.Tensor
    labels: torch.Tensor
    scores: torch.Tensor
    query_index: torch.Tensor

    def __len__(self) -> int:
        return len(self.scores)


def matrix_nms(
    masks: torch.Tensor,
    labels: torch.Tensor,
    scores: torch.Tensor,
    kernel: str = "linear",
    sigma: float = 2.0,
) -> torch.Tensor:
    """Matrix NMS (SOLOv2, Wang et al. 2020): decay every score by its overlap with higher-scored masks.

    For mask j and each higher-scored mask i of the same label, the decay is f(iou_ij) / f(comp_i),
    where comp_i is i's own largest IoU with a mask scored above it: a suppressor that is itself
    suppressed suppresses less. linear: f(x) = 1 − x; gaussian: f(x) = exp(−σ x²). j keeps the
    smallest decay (≤ 1). All pairs at once, no sequential loop.

    Args:
        masks: (n, P) bool masks or float soft masks (IoU then is Σ a·b / (Σ a + Σ b − Σ a·b)).
        labels: (n,) long; masks of different labels do not suppress each other.
        scores: (n,) float.
        kernel: "linear" or "gaussian".
        sigma: σ of the gaussian kernel.

    Returns:
        (n,) decayed scores, in the input order (nothing is removed or re-sorted).
    """
    n = len(scores)
    if n == 0:
        return scores.clone()
    order = torch.argsort(scores, descending=True, stable=True)
    m = masks[order].reshape(n, -1).float()
    area = m.sum(1)
    inter = m @ m.T
    union = area.unsqueeze(0) + area.unsqueeze(1) - inter
    # upper triangle: row i ranks above column j; same label only
    same = labels[order].unsqueeze(0) == labels[order].unsqueeze(1)
    iou = torch.where(same, inter / union.clamp_min(1e-6), 0.0).triu(diagonal=1)
    comp = iou.max(0).values.unsqueeze(1)  # (n, 1): row i's own largest IoU with a higher mask
    if kernel == "linear":
        # clamp: 0/0 when i duplicates a higher mask exactly and j duplicates i (mmdet gives NaN there)
        decay = ((1 - iou) / (1 - comp).clamp_min(1e-6)).min(0).values
    elif kernel == "gaussian":
        decay = torch.exp(-sigma * (iou ** 2 - comp ** 2)).min(0).values
    else:
        raise ValueError(f"kernel must be 'linear' or 'gaussian', got {kernel!r}")
    out = torch.empty_like(scores)
    out[order] = scores[order] * decay.to(scores.dtype)
    return out


@torch.no_grad()
def postprocess_frame(
    cls_logits: torch.Tensor,
    mask_logits: torch.Tensor,
    *,
    class_agnostic: bool,
    topk: int = 20,
    score_thr: float = 0.25,
    mask_thr: float = 0.4,
    min_points: int = 100,
    obj_normalization: bool = True,
    nms: bool = True,
    nms_kernel: str = "linear",
) -> FramePrediction:
    """Turn one frame's final-layer decoder outputs into instances (ESAM `predict_by_feat_instance`).

    Args:
        cls_logits: (n_q, C+1) class logits, last column = no object.
        mask_logits: (n_q, n_pts) point-level mask logits.
        class_agnostic: sum the C class probabilities into one "object" class 0.
        topk: (query, class) pairs kept before NMS (ESAM: 20 online, 100 single-view).
        score_thr: keep scores strictly above (ESAM: 0.25 / 0.3 / 0.21 / 0.2 by config).
        mask_thr: sigmoid threshold that binarises the masks (ESAM `sp_score_thr` 0.4).
        min_points: keep masks with strictly more points (ESAM `npoint_thr` 100 of 20,000).
        obj_normalization: multiply scores by the mask's mean confidence.
        nms: apply matrix NMS on the soft (sigmoid) masks.
        nms_kernel: "linear" (ESAM) or "gaussian".

    Returns:
        FramePrediction sorted by descending score.
    """
    n_q = cls_logits.shape[0]
    probs = F.softmax(cls_logits, dim=-1)[:, :-1]
    if class_agnostic:
        probs = probs.sum(-1, keepdim=True)
    n_cls = probs.shape[1]
    k = min(topk, n_q * n_cls)
    scores, flat = probs.flatten().topk(k)
    query = torch.div(flat, n_cls, rounding_mode="floor")
    labels = flat % n_cls
    logits = mask_logits[query]
    soft = logits.sigmoid()

    if obj_normalization:
        # mean confidence over the points with logit > 0 (sigmoid > 0.5), as ESAM does — not over
        # sigmoid > mask_thr (0.4): the 0.4-0.5 band is kept in the mask but would only dilute the mean
        pos = (logits > 0).to(soft.dtype)
        scores = scores * (soft * pos).sum(1) / (pos.sum(1) + 1e-6)
    if nms:
        # on the soft masks like ESAM (mmdet's SOLOv2 passes binary ones); scores are decayed, not cut
        scores = matrix_nms(soft, labels, scores, kernel=nms_kernel)

    masks = soft > mask_thr
    keep = (scores > score_thr) & (masks.sum(1) > min_points)
    scores, labels, masks, query = scores[keep], labels[keep], masks[keep], query[keep]
    order = torch.argsort(scores, descending=True, stable=True)
    return FramePrediction(masks[order], labels[order], scores[order], query[order])
