"""Online inference over a stream of frames: model step → per-frame post-processing → online merge.

`OnlineSegmenter.step` consumes one frame (a PointBatch of one frame, scan coordinates; for route ❸ also
its CLIP fields `clip_pix`/`clip_global`/`clip_valid`, or `image`) and updates the scene's global
instances; `result` gives the top instances over every point seen so far. The encoder is the model's own
`ESAM.voxel_features` with the memory (backbone + memory + Tiny-SA neck, or the Bi-Fusion encoder), so
every route streams through the same code as training. A `timer` (a callable returning a context manager
per component name) lets benchmarks attribute time to the backbone (the whole encoder but the memory:
3D U-Net, neck, 2D branch and fusion), memory, decoder, post-processing and merge without changing
this code path.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from oseg3d.models.batch import PointBatch
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
        with _Phases(t, m.memory) as phases:
            phases.switch("backbone")
            vox, voxel_feat = m.voxel_features(frame, frame.coord, use_memory=True)
        with t("decoder"):
            pf = voxel_feat[vox.point2voxel]
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


class _Phases:
    """Times the encoder as "backbone" and, inside it, each memory call as "memory" (hooks on the memory
    switch between the two), so the two names add up to the encoder's time without double counting.
    With the null timer it does nothing."""

    def __init__(self, timer, memory):
        self.timer, self.memory, self.cm, self.hooks = timer, memory, None, []

    def __enter__(self) -> "_Phases":
        if self.timer is not _null_timer and self.memory is not None:
            self.hooks = [self.memory.register_forward_pre_hook(lambda *_: self.switch("memory")),
                          self.memory.register_forward_hook(lambda *_: self.switch("backbone"))]
        return self

    def switch(self, name: str | None) -> None:
        if self.timer is _null_timer:
            return
        if self.cm is not None:
            cm, self.cm = self.cm, None
            cm.__exit__(None, None, None)
        if name is not None:
            self.cm = self.timer(name)
            self.cm.__enter__()

    def __exit__(self, *exc) -> None:
        for h in self.hooks:
            h.remove()
        self.hooks = []
        self.switch(None)


def _mask_boxes(coord: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Boxes of predicted masks when the model has no box head (SV models streamed online)."""
    if len(masks) == 0:
        return coord.new_zeros(0, 6)
    big = torch.finfo(coord.dtype).max
    lo = torch.where(masks[..., None], coord[None], big).amin(1)
    hi = torch.where(masks[..., None], coord[None], -big).amax(1)
    return torch.cat([(lo + hi) / 2, hi - lo], 1)
