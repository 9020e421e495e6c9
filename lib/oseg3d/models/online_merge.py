"""Online cross-frame merging: fold each frame's instances into the scene's global instances.

For a new frame, every (scene instance, new instance) pair gets a similarity; Hungarian matching on
it decides which new masks continue a scene instance and which start a new one (esam.md §3.9). Two
similarity rules:

- "code" (ESAM's released `OnlineMerge`, default): S = cos(f_scene, f_new) · IoU(box_scene, box_new),
  clamped at 0; a pair is accepted when S > 0.
- "paper" (ESAM paper Eq. 7): C = IoU(box) + cos(f) + cos(sem); a pair is accepted when C ≥ 1.75.

Both rules only pair instances of the same label. A matched instance takes the union of the masks and
the running mean of score, embedding, semantic logits and box; its label is kept.

Masks are not kept as one (n_inst, points seen) matrix grown by concatenation every frame (ESAM
re-copies 20,000 columns × all instances per frame): each frame's masks are stored once, with the
global instance each row went to, and dense masks are assembled on request.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment

__all__ = ["OnlineMerger", "axis_aligned_iou", "boxes_to_corners"]

PAPER_THRESHOLD = 1.75  # ε of ESAM paper Eq. 7, on a sum of three terms each ≤ 1


def boxes_to_corners(boxes: torch.Tensor) -> torch.Tensor:
    """(n, 6) (cx, cy, cz, dx, dy, dz) → (n, 6) (x1, y1, z1, x2, y2, z2)."""
    half = boxes[:, 3:] / 2
    return torch.cat([boxes[:, :3] - half, boxes[:, :3] + half], dim=1)


def _corner_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(n, m) IoU of corner boxes (x1, y1, z1, x2, y2, z2)."""
    lo = torch.maximum(a[:, None, :3], b[None, :, :3])
    hi = torch.minimum(a[:, None, 3:], b[None, :, 3:])
    inter = (hi - lo).clamp_min(0).prod(-1)
    vol_a = (a[:, 3:] - a[:, :3]).prod(-1)
    vol_b = (b[:, 3:] - b[:, :3]).prod(-1)
    # eps as mmdet3d's AxisAlignedBboxOverlaps3D: degenerate boxes give 0, not NaN
    return inter / (vol_a[:, None] + vol_b[None, :] - inter).clamp_min(1e-6)


def axis_aligned_iou(boxes_a: torch.Tensor, boxes_b: torch.Tensor) -> torch.Tensor:
    """IoU of every pair of axis-aligned 3D boxes.

    Args:
        boxes_a: (n, 6) (cx, cy, cz, dx, dy, dz).
        boxes_b: (m, 6) same format.

    Returns:
        (n, m) IoU in [0, 1].
    """
    return _corner_iou(boxes_to_corners(boxes_a), boxes_to_corners(boxes_b))


@dataclass
class _FrameMasks:
    """One frame's masks as given to `update`, and the global instance of each row."""

    masks: torch.Tensor  # (n, n_pts) bool
    instance: torch.Tensor  # (n,) long
    offset: int  # column of the frame's first point in the scene-wide point order


class OnlineMerger:
    """Global instances of one scene, updated frame by frame.

    Per instance: label, score, L2-normalised merge embedding, semantic logits (optional), box
    (x1, y1, z1, x2, y2, z2) and merge count (number of frames merged into it after the first).

    Args:
        rule: "code" (ESAM's released code) or "paper" (ESAM paper Eq. 7, needs `sem`).
        paper_threshold: ε of the paper rule.
    """

    def __init__(self, rule: str = "code", paper_threshold: float = PAPER_THRESHOLD):
        if rule not in ("code", "paper"):
            raise ValueError(f"rule must be 'code' or 'paper', got {rule!r}")
        self.rule = rule
        self.paper_threshold = paper_threshold
        self.reset()

    def reset(self) -> None:
        """Forget everything (start of a new scene)."""
        self._frames: list[_FrameMasks] = []
        self.total_points = 0
        self.labels: torch.Tensor | None = None
        self.scores: torch.Tensor | None = None
        self.embeddings: torch.Tensor | None = None
        self.sem: torch.Tensor | None = None
        self.boxes: torch.Tensor | None = None  # corners
        self.merge_counts: torch.Tensor | None = None

    @property
    def num_instances(self) -> int:
        return 0 if self.scores is None else len(self.scores)

    def _similarity(self, labels, embeddings, corners, sem=None) -> torch.Tensor:
        """Pair weights of the active rule between the scene's instances and a frame's.

        Args:
            labels: (n,) long; embeddings: (n, D) unit vectors; corners: (n, 6) (x1, y1, z1, x2, y2, z2);
            sem: (n, S) semantic logits or None (code rule).

        Returns:
            (n_inst, n) weight: > 0 for an admissible pair, 0 otherwise.
        """
        cos_f = self.embeddings @ embeddings.T
        iou = _corner_iou(self.boxes, corners)
        if self.rule == "code":
            s = (cos_f * iou).clamp_min(0)
        else:
            if sem is None or self.sem is None:
                raise ValueError("the paper rule needs semantic logits (sem)")
            cos_s = F.normalize(self.sem, dim=1) @ F.normalize(sem, dim=1).T
            c = iou + cos_f + cos_s
            s = torch.where(c >= self.paper_threshold, c, 0.0)
        # ESAM zeroes cross-label pairs (a no-op when class-agnostic)
        return torch.where(self.labels.unsqueeze(1) == labels.unsqueeze(0), s, 0.0)

    @torch.no_grad()  # inference-time state; never keep the decoder's graph alive across frames
    def update(
        self,
        masks: torch.Tensor,
        labels: torch.Tensor,
        scores: torch.Tensor,
        embeddings: torch.Tensor,
        boxes: torch.Tensor,
        sem: torch.Tensor | None = None,
    ) -> None:
        """Merge one frame's instances into the scene.

        Args:
            masks: (n, n_pts) bool over this frame's points (appended after all earlier frames' points).
            labels: (n,) long.
            scores: (n,) float.
            embeddings: (n, D) L2-normalised merge-head embeddings.
            boxes: (n, 6) (cx, cy, cz, dx, dy, dz).
            sem: (n, S) semantic logits, or None (required by the paper rule).
        """
        n = len(scores)
        if self.scores is not None and (sem is None) != (self.sem is None):
            raise ValueError("sem must be given in every frame of a scene or in none")
        corners = boxes_to_corners(boxes.to(scores.dtype)) if n else boxes.new_zeros(0, 6)
        if self.scores is None:
            self._init_state(labels, scores, embeddings, corners, sem)
            instance = torch.arange(n, device=scores.device)
        else:
            rows, cols = self._match(labels, embeddings, corners, sem)
            self._merge(rows, cols, scores, embeddings, corners, sem)
            new = torch.ones(n, dtype=torch.bool, device=scores.device)
            new[cols] = False
            instance = torch.empty(n, dtype=torch.long, device=scores.device)
            instance[cols] = rows
            instance[new] = torch.arange(self.num_instances, self.num_instances + int(new.sum()), device=scores.device)
            self._append(new, labels, scores, embeddings, corners, sem)
        self._frames.append(_FrameMasks(masks.bool(), instance, self.total_points))
        self.total_points += masks.shape[1]

    def _init_state(self, labels, scores, embeddings, corners, sem) -> None:
        self.labels, self.scores = labels.clone(), scores.clone()
        self.embeddings, self.boxes = embeddings.clone(), corners.clone()
        self.sem = None if sem is None else sem.clone()
        self.merge_counts = torch.zeros_like(labels, dtype=torch.long)

    def _match(self, labels, embeddings, corners, sem) -> tuple[torch.Tensor, torch.Tensor]:
        """Hungarian assignment maximising the summed weight; pairs of weight 0 are dropped.

        Inadmissible pairs weigh 0 instead of −∞: since admissible weights are > 0, dropping them
        from an optimal assignment loses nothing, so this equals Hungarian on the admissible pairs.
        """
        dev = labels.device
        if self.num_instances == 0 or len(labels) == 0:
            empty = torch.zeros(0, dtype=torch.long, device=dev)
            return empty, empty
        s = self._similarity(labels, embeddings, corners, sem)
        r, c = linear_sum_assignment(s.detach().cpu().double().numpy(), maximize=True)
        rows = torch.as_tensor(r, dtype=torch.long, device=dev)
        cols = torch.as_tensor(c, dtype=torch.long, device=dev)
        ok = s[rows, cols] > 0
        return rows[ok], cols[ok]

    def _merge(self, rows, cols, scores, embeddings, corners, sem) -> None:
        """Running means (old·n + new)/(n + 1) over the n frames already in each matched instance."""
        n = (self.merge_counts[rows] + 1).to(self.scores.dtype)

        def mean(old: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
            w = n.view(-1, *([1] * (old.dim() - 1)))
            return (old[rows] * w + new[cols]) / (w + 1)

        self.scores[rows] = mean(self.scores, scores)
        # ESAM leaves the averaged embedding un-normalised; we re-normalise so cosines stay cosines
        self.embeddings[rows] = F.normalize(mean(self.embeddings, embeddings), dim=1)
        self.boxes[rows] = mean(self.boxes, corners)
        if self.sem is not None:
            self.sem[rows] = mean(self.sem, sem)
        self.merge_counts[rows] += 1

    def _append(self, new, labels, scores, embeddings, corners, sem) -> None:
        """Unmatched masks of the frame become new instances."""
        self.labels = torch.cat([self.labels, labels[new]])
        self.scores = torch.cat([self.scores, scores[new]])
        self.embeddings = torch.cat([self.embeddings, embeddings[new]])
        self.boxes = torch.cat([self.boxes, corners[new]])
        if self.sem is not None:
            self.sem = torch.cat([self.sem, sem[new]])
        self.merge_counts = torch.cat([self.merge_counts, torch.zeros_like(labels[new])])

    def _dense(self, instances: torch.Tensor) -> torch.Tensor:
        """(len(instances), total_points) bool masks of the given instances, in that order."""
        dev = instances.device
        out = torch.zeros(len(instances), self.total_points, dtype=torch.bool, device=dev)
        slot = torch.full((max(self.num_instances, 1),), -1, dtype=torch.long, device=dev)
        slot[instances] = torch.arange(len(instances), device=dev)
        for fr in self._frames:
            s = slot[fr.instance]
            keep = s >= 0
            out[s[keep], fr.offset:fr.offset + fr.masks.shape[1]] = fr.masks[keep]
        return out

    def current_masks(self) -> torch.Tensor:
        """(n_inst, total_points) bool masks of all instances, columns in the order points were added."""
        dev = self.scores.device if self.scores is not None else None
        return self._dense(torch.arange(self.num_instances, device=dev))

    def result(self, topk: int = 100) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The `topk` best-scored instances (ESAM `inscat_topk_insts` = 100).

        Returns:
            masks (m, total_points) bool, labels (m,) long, scores (m,) float; by descending score.
        """
        if self.num_instances == 0:
            return (torch.zeros(0, self.total_points, dtype=torch.bool), torch.zeros(0, dtype=torch.long),
                    torch.zeros(0))
        order = torch.argsort(self.scores, descending=True, stable=True)[:topk]
        return self._dense(order), self.labels[order], self.scores[order]
