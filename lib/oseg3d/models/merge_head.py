"""Merge head and its contrastive loss: query embeddings that stay the same for one object across frames.

The online merger (`online_merge.py`) matches the instances of a new frame to the scene's instances
partly by the cosine of these embeddings. The head is a small MLP on the decoder's (LayerNorm-ed)
queries; the loss pulls the mean embedding of an object in frame t towards its mean embedding in frame
t+1 and pushes it away from the other objects of t+1 (InfoNCE), in both directions (esam.md §3.6).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["MergeHead", "merge_contrastive_loss"]


class MergeHead(nn.Module):
    """Linear-Norm-ReLU-Linear-Norm, then L2 normalisation (0.26 M parameters at 256/512/256).

    Args:
        in_channels: query width (decoder d_model).
        out_channels: embedding width.
        hidden: hidden width.
        norm: "batch" (ESAM with SAM masks) or "layer" (ESAM-E with FastSAM masks).
    """

    def __init__(self, in_channels: int = 256, out_channels: int = 256, hidden: int = 512, norm: str = "batch"):
        super().__init__()
        if norm == "batch":
            norm_layer = nn.BatchNorm1d
        elif norm == "layer":
            norm_layer = nn.LayerNorm
        else:
            raise ValueError(f"norm must be 'batch' or 'layer', got {norm!r}")
        self.net = nn.Sequential(
            nn.Linear(in_channels, hidden),
            norm_layer(hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, out_channels),
            norm_layer(out_channels),
        )

    def forward(self, queries: torch.Tensor) -> torch.Tensor:
        """(n_q, in_channels) queries → (n_q, out_channels) unit-length embeddings."""
        return F.normalize(self.net(queries), p=2, dim=-1)


def _instance_centres(emb: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean embedding of each instance's queries, (K, D), and whether it has any, (K,) bool."""
    m = masks.to(emb.dtype)
    count = m.sum(1)
    centres = (m @ emb) / count.clamp_min(1).unsqueeze(1)
    return centres, count > 0


def _info_nce(logits: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor | None:
    """Cross-entropy of instance i in one frame against all instances of the other, target = i.

    Args:
        logits: (K, K) similarities / τ, row = instance in the source frame, column = in the target frame.
        rows: (K,) bool, instance present in both frames (has a positive).
        cols: (K,) bool, instance present in the target frame (the candidates).

    Returns:
        Mean loss over the valid rows, or None when there is none.
    """
    if not bool(rows.any()):
        return None
    target = torch.nonzero(rows).squeeze(1)
    # absent instances have zero centres; ESAM masks their exact-zero logits to −inf, we mask by presence
    out = logits[rows].masked_fill(~cols.unsqueeze(0), float("-inf"))
    return F.cross_entropy(out, target)


def merge_contrastive_loss(
    embeddings: list[torch.Tensor],
    inst_sp_masks_of_queries: list[torch.Tensor],
    temperature: float = 0.07,
    weight: float = 2.0,
) -> torch.Tensor:
    """Temporal InfoNCE on instance centres of adjacent frames of one clip (ESAM's `tmp` merge loss).

    For every adjacent pair (t, t+1) and each direction: rows are the instances present in both frames,
    columns all instances present in the target frame, target the same instance. Each direction is the
    mean over its rows; the result is the sum over pairs and directions times `weight` (ESAM then
    averages this over the clips of a batch: the caller's job).

    Args:
        embeddings: per frame (n_q, D) L2-normalised merge-head embeddings.
        inst_sp_masks_of_queries: per frame (K, n_q) bool, query's superpoint belongs to instance k;
            K is the clip-global instance count, the same in every frame (all-False row = absent).
        temperature: τ of the softmax (0.07 in ESAM's code, 0.02 in the paper).
        weight: loss weight (2.0 in ESAM).

    Returns:
        Scalar loss; an exact zero still attached to the graph when no instance persists across frames.
    """
    if len(embeddings) != len(inst_sp_masks_of_queries):
        raise ValueError("one instance mask per frame embedding expected")
    if not embeddings:
        return torch.zeros(())
    # 0·Σ keeps the result in the graph (finite zero gradients) even if no pair contributes
    total = embeddings[0].sum() * 0.0
    centres = [_instance_centres(e, m) for e, m in zip(embeddings, inst_sp_masks_of_queries)]
    for (c_a, p_a), (c_b, p_b) in zip(centres[:-1], centres[1:]):
        if c_a.shape[0] != c_b.shape[0]:
            raise ValueError("K (clip-global instance count) must be the same in every frame")
        logits = (c_a @ c_b.T) / temperature
        both = p_a & p_b
        for loss in (_info_nce(logits, both, p_b), _info_nce(logits.T, both, p_a)):
            if loss is not None:
                total = total + loss
    return total * weight
