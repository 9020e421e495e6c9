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

Each term is first a mean within a frame (cls: weighted by class as `F.cross_entropy` does; bce / dice /
bbox: over its matched pairs; sem: over its non-ignored queries), then a mean over the frames of the
batch that define it (cls: frames with queries; mask and box terms: frames with at least one matched
pair; sem: frames with a non-ignored target). A layer where no frame defines a term gives an exact
zero that is still connected to the predictions (ESAM issue #17: its criterion took the mean of an
empty tensor there and trained on NaN).

All frames of a batch are computed at once (GPU training is launch-bound): the per-frame lists become
zero-padded (B, rows, cols) tensors, taken as they are where the frames are slices of one padded tensor
(the decoder's outputs), else built by `_Pad` (one concatenation and one gather; its backward hands
each frame a view of the padded gradient). The targets are padded once per call for all predictions,
their sizes reaching the device in one copy that does not wait for it. Matching and losses then run
on the padded tensors with validity masks, so a prediction costs a fixed number of kernels whatever
the frame count, and nothing reads a value back to the host: terms a frame lacks are masked out with
`where`, not skipped.

ESAM's normalisation quirk (`fix_dice_loss_weight` + `fix_mean_loss`, from OneFormer3D) makes the final
dice ≈ 4 × the mean and the aux dice 4·mean/B. We do not copy it: `dice_scale` multiplies the final-layer
dice for a caller who wants it (ESAM's effective value is 4), aux layers always use the plain mean.
ESAM also divides the box loss by the batch size rather than by the frames that have matches.
"""
from __future__ import annotations

from functools import cached_property
from itertools import accumulate

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from oseg3d.models.matcher import batched_match
from oseg3d.models.targets import FrameTargets

__all__ = ["Criterion", "aligned_box_iou", "dice_loss"]


def aligned_box_iou(a: Tensor, b: Tensor, eps: float = 1e-6) -> Tensor:
    """IoU of paired axis-aligned 3D boxes.

    Args:
        a, b: (..., 6) boxes (cx, cy, cz, dx, dy, dz).
        eps: floor of the union volume.

    Returns:
        (...) IoU.
    """
    lo = torch.maximum(a[..., :3] - a[..., 3:] / 2, b[..., :3] - b[..., 3:] / 2)
    hi = torch.minimum(a[..., :3] + a[..., 3:] / 2, b[..., :3] + b[..., 3:] / 2)
    inter = _volume((hi - lo).clamp_min(0))
    union = _volume(a[..., 3:]) + _volume(b[..., 3:]) - inter
    return inter / union.clamp_min(eps)


def _volume(size: Tensor) -> Tensor:
    # not .prod(-1): its backward counts the zero factors on the host (a synchronisation per call)
    return size[..., 0] * size[..., 1] * size[..., 2]


def dice_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean over rows of 1 − (2|p∩t| + 1)/(|p| + |t| + 1), p = sigmoid(logits); (M, n) inputs."""
    p = logits.sigmoid()
    return (1 - (2 * (p * targets).sum(1) + 1) / (p.sum(1) + targets.sum(1) + 1)).mean()


def _to_device(rows: list[list[int]], device: torch.device) -> Tensor:
    """Small host integers onto `device` without waiting for it (a pageable copy would synchronise)."""
    t = torch.tensor(rows, dtype=torch.long)
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


class _Layout:
    """Where frame f's (rows_f, cols_f) block sits in a zero-padded (B, R, C) tensor.

    Row i of frame f starts at `start[f·R + i]` in the concatenation of the frames' flattened blocks;
    padded rows start at its end, where `_Pad` appends C zeros. `col_pad` (B, 1, C) marks the columns
    past a frame's own (None when every frame has C).
    """

    def __init__(self, rows: list[int], cols: list[int], start: Tensor, row_ok: Tensor, col_pad: Tensor | None = None):
        self.rows, self.cols = rows, cols
        self.shape = (len(rows), max(rows, default=0), max(cols, default=0))
        self.start, self.row_ok, self.col_pad = start, row_ok, col_pad

    @cached_property
    def row_pad(self) -> Tensor:
        return ~self.row_ok[:, :, None]  # (B, R, 1)

    def slices_of(self, xs: list[Tensor]) -> Tensor | None:
        """The (B, ≥ R, ≥ C) tensor whose [f, :rows_f, :cols_f] the frames' tensors are, if they are such views.

        The decoder hands out its padded predictions that way; padding them again would copy every frame.
        """
        base = xs[0]._base
        b, r, c = self.shape
        if base is None or base.dim() != 3 or base.shape[0] != b or base.shape[1] < r or base.shape[2] < c:
            return None
        s0, s1, s2 = base.stride()
        for f, x in enumerate(xs):
            if (x._base is not base or x.storage_offset() != base.storage_offset() + f * s0
                    or (x.shape[0] > 1 and x.stride(0) != s1) or (x.shape[1] > 1 and x.stride(1) != s2)):
                return None
        return base


class _Pad(torch.autograd.Function):
    """Frames' (rows_f, cols_f) tensors → one zero-padded (B, R, C) tensor, in a fixed number of kernels.

    The gather reads rows from an overlapping `unfold` view of the concatenation (row starts, not an
    index per element: a P-level mask batch has ~10^8 elements). The backward hands each frame its
    block of the padded gradient as a view, so it launches nothing.
    """

    @staticmethod
    def forward(ctx, layout: _Layout, *xs: Tensor) -> Tensor:
        ctx.layout = layout
        b, r, c = layout.shape
        if b * r * c == 0:
            return xs[0].new_zeros(b, r, c)
        flat = torch.cat([x.reshape(-1) for x in xs] + [xs[0].new_zeros(c)])
        out = flat.unfold(0, c, 1).index_select(0, layout.start).view(b, r, c)
        if layout.col_pad is not None:  # a row shorter than C read the head of the next row
            out.masked_fill_(layout.col_pad, 0)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        lay = ctx.layout
        _, r_max, c_max = lay.shape
        grad = grad.contiguous()
        at = grad.storage_offset()
        return (None, *(grad.as_strided((r, c), (c_max, 1), at + f * r_max * c_max) if need else None
                        for f, (r, c, need) in enumerate(zip(lay.rows, lay.cols, ctx.needs_input_grad[1:]))))


class _Level:
    """Padded object masks of one mask level (SP or P), shared by the predictions at that level."""

    def __init__(self, units: str, gt: Tensor, n_units: Tensor):
        self.units = units
        self.gt = gt.float()  # (B, K, N)
        self.gt_size = self.gt.sum(2)  # (B, K)
        self.unit = (torch.arange(gt.shape[2], device=gt.device) < n_units[:, None]).float()  # (B, N)
        self.n_units = n_units.clamp_min(1).float()  # (B,)


class _Batch:
    """The targets of a batch, padded once per `Criterion.forward` and shared by all its predictions.

    Sizes per frame: q queries, sp superpoints, p points, k objects (rows of its FrameTargets).
    """

    def __init__(self, targets: list[FrameTargets], query_ids: list[Tensor] | None, class_agnostic: bool,
                 ignore: int):
        self.targets = targets
        self.device = targets[0].inst_labels.device
        n_sp = [t.inst_sp_masks.shape[1] for t in targets]
        n_q = n_sp if query_ids is None else [len(q) for q in query_ids]
        n_p = [t.inst_p_masks.shape[1] for t in targets]
        n_obj = [len(t.inst_labels) for t in targets]
        has_box = [int(t.boxes is not None) for t in targets]
        counts = {"q": n_q, "sp": n_sp, "p": n_p, "k": n_obj}
        # where each frame's block starts in a concatenation, for the layouts whose rows differ in length
        blocks = [("q", 1), ("k", 1), ("sp", 1), ("q", "sp"), ("q", "p"), ("k", "sp"), ("k", "p")]
        offsets = []
        for rows, cols in blocks:
            widths = [cols] * len(targets) if isinstance(cols, int) else counts[cols]
            offsets.append(list(accumulate((r * c for r, c in zip(counts[rows], widths)), initial=0))[:-1])
        meta = _to_device([n_q, n_sp, n_p, n_obj, has_box, *offsets], self.device)  # one copy, no wait
        self.sizes = {name: (counts[name], meta[i]) for i, name in enumerate(counts)}
        self._offsets = dict(zip(blocks, meta[5:]))
        self.frame_has_box, self.any_box = meta[4].bool(), any(has_box)
        self.q_frames = sum(n > 0 for n in n_q)  # cls is defined for every frame with queries
        self._layouts: dict = {}
        self._levels: dict[str, _Level] = {}
        self._boxes = None

        q_layout = self.layout("q", 1)
        self.q_ok = q_layout.row_ok  # (B, Q)
        self.has_q = meta[0] > 0
        if query_ids is None:
            qids = torch.arange(q_layout.shape[1], device=self.device).expand(q_layout.shape[:2])
        else:
            qids = self.pad([q[:, None] for q in query_ids], "q", 1)[..., 0]
        labels = self.pad([t.inst_labels[:, None] for t in targets], "k", 1)[..., 0]
        labels = torch.where(self.layout("k", 1).row_ok, labels, -1)
        self.labels = torch.where(labels >= 0, 0, -1) if class_agnostic else labels  # (B, K)
        gt_sp = self.pad([t.inst_sp_masks for t in targets], "k", "sp")
        self._levels["SP"] = _Level("sp", gt_sp, meta[1])
        b, k, q = self.labels.shape + (qids.shape[1],)
        self.query_masks = gt_sp.gather(2, qids[:, None, :].expand(b, k, q)) & self.q_ok[:, None, :]  # (B, K, Q)
        sp_sem = self.pad([t.sp_sem[:, None] for t in targets], "sp", 1)[..., 0]
        self.sem_target = torch.where(self.q_ok, sp_sem.gather(1, qids), ignore)  # (B, Q)

    def layout(self, rows: str, cols: str | int) -> _Layout:
        """Layout of the frames' (rows, cols) blocks: cols a size name or a width shared by all frames."""
        if (rows, cols) in self._layouts:
            return self._layouts[rows, cols]
        r, r_t = self.sizes[rows]
        if cols == 1:
            i = torch.arange(max(r, default=0), device=self.device)
            row_ok = i < r_t[:, None]
            start = torch.where(row_ok, self._offsets[rows, 1][:, None] + i, sum(r))
            lay = _Layout(r, [1] * len(r), start.flatten(), row_ok)
        elif isinstance(cols, int):  # padded rows start at sum(r) · cols, the end
            base = self.layout(rows, 1)
            lay = _Layout(r, [cols] * len(r), base.start * cols, base.row_ok)
        else:
            base = self.layout(rows, 1)
            c, c_t = self.sizes[cols]
            i = torch.arange(max(r, default=0), device=self.device)
            start = torch.where(base.row_ok, self._offsets[rows, cols][:, None] + i * c_t[:, None],
                                sum(a * b for a, b in zip(r, c)))
            col_pad = None
            if min(c, default=0) < max(c, default=0):
                col_pad = (torch.arange(max(c), device=self.device) >= c_t[:, None])[:, None, :]
            lay = _Layout(r, c, start.flatten(), base.row_ok, col_pad)
        self._layouts[rows, cols] = lay
        return lay

    def pad(self, xs: list[Tensor], rows: str, cols: str | int) -> Tensor:
        """(B, R, C) zero-padded stack of the frames' (rows_f, cols_f) tensors, differentiable."""
        lay = self.layout(rows, cols)
        for x, r, c in zip(xs, lay.rows, lay.cols):
            if tuple(x.shape) != (r, c):
                raise ValueError(f"expected a ({r}, {c}) tensor per frame ({rows} x {cols}), got {tuple(x.shape)}")
        base = lay.slices_of(xs)
        if base is None:
            return _Pad.apply(lay, *xs)
        _, r, c = lay.shape  # the base's padding is not zero (padded queries and points have logits too)
        out = base[:, :r, :c].masked_fill(lay.row_pad, 0)
        return out if lay.col_pad is None else out.masked_fill(lay.col_pad, 0)

    def level(self, mode: str) -> _Level:
        if mode not in self._levels:  # "P"; "SP" is built with the query masks
            self._levels[mode] = _Level("p", self.pad([t.inst_p_masks for t in self.targets], "k", "p"),
                                        self.sizes["p"][1])
        return self._levels[mode]

    @property
    def boxes(self) -> Tensor:
        """(B, K, 6) float object boxes, zero for frames without boxes."""
        if self._boxes is None:
            dtype = next(t.boxes.dtype for t in self.targets if t.boxes is not None)
            blank = torch.zeros(self.labels.shape[1], 6, dtype=dtype, device=self.device)
            boxes = [blank[:len(t.inst_labels)] if t.boxes is None else t.boxes for t in self.targets]
            self._boxes = self.pad(boxes, "k", 6).float()
        return self._boxes


def _frame_means(keep: Tensor, *values: Tensor) -> list[Tensor]:
    """Per (B, K) values: the mean over the frames with a kept pair of each frame's mean over its kept pairs.

    Exactly 0 where nothing is kept, and still connected to the values. `where`, not a product, so that
    a pair left out contributes nothing even where its value is not finite.
    """
    count = keep.sum(1)
    per_frame = torch.where(keep, torch.stack(values), 0).sum(2) / count.clamp_min(1)
    return list(per_frame.sum(1) / (count > 0).sum().clamp_min(1))


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

    def _cls_loss(self, cls: Tensor, query_idx: Tensor, matched: Tensor, batch: _Batch) -> Tensor:
        """Per frame F.cross_entropy with class weights (Σ w·nll / Σ w), (B, Q, C + 1) logits."""
        b, q, c = cls.shape
        k = query_idx.shape[1]
        target = torch.full((b, q), self.num_classes, dtype=torch.long, device=cls.device)
        if k and q:
            # a query picked by two objects takes the later object's label, as the sequential
            # `target[query_idx] = labels` of a per-frame loop did; amax keeps that deterministic
            obj = torch.where(matched, torch.arange(k, device=cls.device), -1)
            winner = torch.full_like(target, -1).scatter_reduce(1, query_idx, obj, "amax")
            target = torch.where(winner >= 0, batch.labels.gather(1, winner.clamp_min(0)), self.num_classes)
        weight = self.class_weight.to(cls.device)
        # padded queries are ignored (-100): no loss and no weight
        nll = F.cross_entropy(cls.reshape(b * q, c), torch.where(batch.q_ok, target, -100).flatten(), weight=weight,
                              reduction="none").view(b, q)
        per_frame = nll.sum(1) / torch.where(batch.has_q, (weight[target] * batch.q_ok).sum(1), 1)
        return per_frame.sum() / max(batch.q_frames, 1)

    def _layer_losses(self, layer: dict, batch: _Batch, prefix: str, dice_scale: float,
                      matches: tuple[Tensor, Tensor] | None = None):
        """Losses of one prediction; returns (dict of weighted terms, the matches used)."""
        w_cls, w_bce, w_dice, _, w_bbox = self.loss_weight
        lv = batch.level(layer["mask_mode"])
        cls = batch.pad(layer["cls_preds"], "q", layer["cls_preds"][0].shape[1]).float()
        masks = batch.pad(layer["masks"], "q", lv.units)
        if matches is None:
            matches = batched_match(cls, masks, batch.labels, lv.gt, batch.query_masks, lv.unit)
        query_idx, matched = matches
        b, k, n = lv.gt.shape
        # (B, K, N): the mask of object k's query; gathered before the float cast, as the per-frame loop did
        picked = masks.gather(1, query_idx[:, :, None].expand(b, k, n)).float()
        unit = lv.unit[:, None, :]
        bce = F.binary_cross_entropy_with_logits(picked, lv.gt, weight=unit, reduction="none").sum(2)
        p = picked.sigmoid() * unit
        dice = 1 - (2 * (p * lv.gt).sum(2) + 1) / (p.sum(2) + lv.gt_size + 1)
        bce, dice = _frame_means(matched, bce / lv.n_units[:, None], dice)
        out = {
            prefix + "loss_cls": w_cls * self._cls_loss(cls, query_idx, matched, batch),
            prefix + "loss_bce": w_bce * bce,
            prefix + "loss_dice": w_dice * dice_scale * dice,
        }
        boxes = layer.get("bboxes")
        if boxes is not None and batch.any_box:
            keep = matched & batch.frame_has_box[:, None]
            box = batch.pad(boxes, "q", 6).float().gather(1, query_idx[:, :, None].expand(b, k, 6))
            # pairs left out compare the target with itself: their (maybe inf) box must not reach the backward
            box = torch.where(keep[:, :, None], box, batch.boxes)
            out[prefix + "loss_bbox"] = w_bbox * _frame_means(keep, 1 - aligned_box_iou(box, batch.boxes))[0]
        return out, matches

    def _semantic_loss(self, sem_preds: list[Tensor], batch: _Batch) -> Tensor:
        # the extra "no object" semantic column is not a class any superpoint can have
        sem = batch.pad(sem_preds, "q", sem_preds[0].shape[1]).float()[:, :, :-1]
        b, q, s = sem.shape
        nll = F.cross_entropy(sem.reshape(b * q, s), batch.sem_target.reshape(-1), ignore_index=self.num_semantic,
                              reduction="none").view(b, q)
        count = (batch.sem_target != self.num_semantic).sum(1)
        per_frame = nll.sum(1) / count.clamp_min(1)
        return self.sem_weight * (per_frame.sum() / (count > 0).sum().clamp_min(1))

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
        with torch.autocast(device_type=targets[0].inst_labels.device.type, enabled=False):
            batch = _Batch(targets, query_ids, self.num_classes == 1, self.num_semantic)
            losses, matches = self._layer_losses(pred, batch, "", self.dice_scale)
            losses["loss_sem"] = self._semantic_loss(pred["sem_preds"], batch)
            for i, aux in enumerate(pred.get("aux_outputs") or []):
                reuse = None if self.iter_matcher else matches
                losses.update(self._layer_losses(aux, batch, f"aux{i}_", 1.0, reuse)[0])
        return losses
