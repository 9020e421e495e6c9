"""Online inference over a stream of frames: model step → per-frame post-processing → online merge.

`OnlineSegmenter.step` consumes one frame (a PointBatch of one frame, scan coordinates) and updates the
scene's global instances; `result` gives the top instances over every point seen so far. A `timer`
(a callable returning a context manager per component name) lets benchmarks attribute time to the
backbone, memory, decoder, post-processing and merge without changing this code path.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from spconv.pytorch import SparseConvTensor

from oseg3d.models.batch import PointBatch, voxelize
from oseg3d.models.online_merge import OnlineMerger
from oseg3d.models.postprocess import FramePrediction, postprocess_frame

__all__ = ["OnlineConfig", "OnlineSegmenter"]


@dataclass
class OnlineConfig:
    """ESAM's online test_cfg (esam.md §3.8-3.9)."""

    topk_insts: int = 20
    inst_score_thr: float = 0.25
    sp_score_thr: float = 0.4
    npoint_thr: int = 100
    obj_normalization: bool = True
    nms: bool = True
    merge_rule: str = "code"
    output_topk: int = 100


def _null_timer(_name: str):
    return contextlib.nullcontext()


class OnlineSegmenter:
    """Streams the frames of one scene through an online ESAM model."""

    def __init__(self, model, cfg: OnlineConfig | None = None, timer=_null_timer):
        self.model, self.cfg, self.timer = model, cfg or OnlineConfig(), timer
        self.merger = OnlineMerger(cfg.merge_rule if cfg else "code")
        self.reset()

    def reset(self) -> None:
        if self.model.memory is not None:
            self.model.memory.reset()
        self.merger.reset()

    @torch.no_grad()
    def step(self, frame: PointBatch) -> FramePrediction:
        """Process one frame; returns its own post-processed prediction (the merge state is updated)."""
        m, t = self.model, self.timer
        with t("backbone"):
            vox = voxelize(frame.coord, frame.feat, frame.batch_index, 1, m.voxel_size)
            stem, enc = m.backbone.encode(SparseConvTensor(vox.features, vox.indices, vox.spatial_shape, 1))
        if m.memory is not None:
            with t("memory"):
                enc = m.memory(enc, vox.origin)
        with t("backbone"):
            out = m.backbone.decode(stem, enc)
        with t("decoder"):
            pf = out.features[vox.point2voxel]
            n_sp = int(frame.superpoint.max()) + 1
            sp_feat, sp_xyz, _ = m.pooling(frame.coord, pf, frame.superpoint, n_sp)
            pred = m.decoder([sp_feat], [torch.cat([frame.coord.to(pf.dtype), pf], 1)], [frame.superpoint], None, [sp_xyz])
        self.last_prediction = pred  # the raw decoder output of this frame (semantic heads, for evaluation)
        c = self.cfg
        with t("postprocess"):
            fp = postprocess_frame(pred["cls_preds"][0].float(), pred["masks"][0].float(), class_agnostic=m.class_agnostic,
                                   topk=c.topk_insts, score_thr=c.inst_score_thr, mask_thr=c.sp_score_thr,
                                   min_points=c.npoint_thr, obj_normalization=c.obj_normalization, nms=c.nms)
        with t("merge"):
            q = fp.query_index
            emb = m.merge_head(pred["queries"][0][q].float()) if m.merge_head is not None else pred["queries"][0][q].float()
            boxes = pred["bboxes"][0][q].float() if pred.get("bboxes") is not None else _mask_boxes(frame.coord, fp.masks)
            self.merger.update(fp.masks, fp.labels, fp.scores, emb, boxes, pred["sem_preds"][0][q].float())
        return fp

    def result(self):
        """(masks (m, points seen) bool, labels, scores) of the scene's top instances."""
        return self.merger.result(self.cfg.output_topk)


def _mask_boxes(coord: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Boxes of predicted masks when the model has no box head (SV models streamed online)."""
    if len(masks) == 0:
        return coord.new_zeros(0, 6)
    big = torch.finfo(coord.dtype).max
    lo = torch.where(masks[..., None], coord[None], big).amin(1)
    hi = torch.where(masks[..., None], coord[None], -big).amax(1)
    return torch.cat([(lo + hi) / 2, hi - lo], 1)
