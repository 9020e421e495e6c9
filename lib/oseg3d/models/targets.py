"""Training targets of one frame, built from per-point labels (ESAM's AddSuperPointAnnotations).

Instance ids of stuff (wall, floor) and ignored points become -1; the rest are renumbered 0..K-1 over
the whole sample (for an MV clip: over all its frames, so row k is the same object in every frame,
and an object absent from a frame keeps an all-False row). A superpoint belongs to an instance when
more than half of its points do; its semantic target is the class of more than half of its points,
else the ignore index.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from oseg3d.models.scatter import scatter_mean

__all__ = ["FrameTargets", "build_targets", "STUFF_CLASSES"]

STUFF_CLASSES = (0, 1)  # wall, floor after class mapping (ScanNet and ScanNet200 with the 2↔3 swap)


@dataclass
class FrameTargets:
    """Targets of one frame.

    Attributes:
        inst_labels: (K,) long instance class (semantic class − 2; 0 for class-agnostic), −1 if absent here.
        inst_sp_masks: (K, n_sp) bool, superpoint ⊂ instance (> 50 % of its points).
        inst_p_masks: (K, n_pts) bool, point-level instance masks.
        sp_sem: (n_sp,) long majority semantic class per superpoint, `num_sem` = ignore.
        boxes: (K, 6) float (cx, cy, cz, dx, dy, dz) amodal axis-aligned boxes, or None (SV).
        present: (K,) bool, instance has points in this frame.
    """

    inst_labels: torch.Tensor
    inst_sp_masks: torch.Tensor
    inst_p_masks: torch.Tensor
    sp_sem: torch.Tensor
    boxes: torch.Tensor | None
    present: torch.Tensor


def build_targets(
    instance: list[torch.Tensor],
    semantic: list[torch.Tensor],
    superpoint: list[torch.Tensor],
    num_sem: int,
    class_agnostic: bool,
    boxes: torch.Tensor | None = None,
    box_ids: torch.Tensor | None = None,
) -> list[FrameTargets]:
    """Targets for the frames of one sample (one SV frame, or the T frames of an MV clip).

    Args:
        instance: per frame (n_pts,) long scene-global instance ids (0 = none).
        semantic: per frame (n_pts,) long mapped semantic class 0..num_sem-1, num_sem = ignore.
        superpoint: per frame (n_pts,) long contiguous superpoint ids.
        num_sem: number of semantic classes (20 / 200).
        class_agnostic: all thing instances get class 0 (ESAM on ScanNet200).
        boxes: optional (M, 6) amodal boxes of scene instances `box_ids` (M,), for MV.
    """
    ids_all = []
    for ins, sem in zip(instance, semantic):
        thing = (ins > 0) & (sem >= len(STUFF_CLASSES)) & (sem < num_sem)
        ids_all.append(ins[thing])
    uniq = torch.unique(torch.cat(ids_all)) if ids_all else torch.zeros(0, dtype=torch.long)
    k = len(uniq)
    out = []
    for ins, sem, sp in zip(instance, semantic, superpoint):
        dev = ins.device
        n_sp = int(sp.max()) + 1 if sp.numel() else 0
        thing = (ins > 0) & (sem >= len(STUFF_CLASSES)) & (sem < num_sem)
        row = torch.full_like(ins, -1)
        row[thing] = torch.searchsorted(uniq.to(dev), ins[thing])
        p_masks = torch.zeros(k, len(ins), dtype=torch.bool, device=dev)
        sel = row >= 0
        p_masks[row[sel], torch.nonzero(sel).squeeze(1)] = True
        sp_masks = scatter_mean(p_masks.T.float(), sp, n_sp).T > 0.5 if k else torch.zeros(0, n_sp, dtype=torch.bool, device=dev)
        present = p_masks.any(1)
        labels = torch.full((k,), -1, dtype=torch.long, device=dev)
        if k:
            # class of each instance: its points' (single) semantic class
            cls = torch.zeros(k, dtype=torch.long, device=dev).scatter_reduce(0, row[sel], sem[sel], "amax", include_self=False)
            labels = torch.where(present, torch.zeros_like(cls) if class_agnostic else cls - len(STUFF_CLASSES), labels)
        onehot = torch.nn.functional.one_hot(sem.clamp_max(num_sem), num_sem + 1).float()
        frac, sp_cls = scatter_mean(onehot, sp, n_sp).max(1)
        sp_sem = torch.where(frac > 0.5, sp_cls, torch.full_like(sp_cls, num_sem))
        fb = None
        if boxes is not None and box_ids is not None:
            pos = torch.searchsorted(box_ids.to(dev), uniq.to(dev)).clamp_max(len(box_ids) - 1)
            fb = boxes.to(dev)[pos]
        out.append(FrameTargets(labels, sp_masks, p_masks, sp_sem, fb, present))
    return out
