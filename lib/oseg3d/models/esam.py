"""ESAM: sparse U-Net → superpoint pooling → superpoint-query decoder, with optional online parts.

One module composes the parts it is given (built in `build.py`); nothing here knows which route it
serves. SV: a batch of independent frames. MV: B clips of T frames, run frame by frame through the
memory adapters (reset per clip), losses summed over frames, plus the merge head's contrastive loss
between adjacent frames of each clip. The encoder is the 3D U-Net (+ the Tiny-SA `neck`, route ❷) or
the Bi-Fusion `bi_encoder` (route ❸, which holds the U-Net and the neck itself).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from spconv.pytorch import SparseConvTensor
from torch import nn

from oseg3d.models.batch import PointBatch, Voxels, voxelize
from oseg3d.models.merge_head import merge_contrastive_loss
from oseg3d.models.scatter import scatter_max
from oseg3d.models.targets import FrameTargets, build_targets

__all__ = ["ESAM", "FrameFeatures", "instance_boxes"]


@dataclass
class FrameFeatures:
    """Per-frame inputs of the decoder (lists over the frames of a batch)."""

    sp_feats: list[torch.Tensor]  # (n_sp, 96)
    sp_xyz: list[torch.Tensor]  # (n_sp, 3)
    point_feats: list[torch.Tensor]  # (n_pts, 99) = xyz ‖ 96
    sp_index: list[torch.Tensor]  # (n_pts,) local superpoint ids


def instance_boxes(coord: torch.Tensor, instance: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Axis-aligned boxes (cx, cy, cz, dx, dy, dz) of every instance id > 0 in `instance`; returns (ids, boxes)."""
    ids, inv = torch.unique(instance, return_inverse=True)
    hi = scatter_max(coord, inv, len(ids))
    lo = -scatter_max(-coord, inv, len(ids))
    keep = ids > 0
    return ids[keep], torch.cat([(hi + lo) / 2, hi - lo], 1)[keep]


class ESAM(nn.Module):
    """The model. See `build.build_model` for how the parts are chosen."""

    def __init__(self, backbone, pooling, decoder, criterion, memory=None, merge_head=None, *,
                 num_semantic: int, class_agnostic: bool, voxel_size: float = 0.02, query_thr: float = 0.5,
                 neck=None, bi_encoder=None):
        super().__init__()
        if (backbone is None) == (bi_encoder is None):
            raise ValueError("give either a 3D backbone (routes ❶ ❷) or a Bi-Fusion encoder (route ❸)")
        self.backbone, self.pooling, self.decoder, self.criterion = backbone, pooling, decoder, criterion
        self.memory, self.merge_head = memory, merge_head
        # route ❷: Tiny-SA after the backbone; route ❸: the Bi-Fusion encoder holds the backbone and neck
        self.neck, self.bi_encoder = neck, bi_encoder
        self.num_semantic, self.class_agnostic = num_semantic, class_agnostic
        self.voxel_size, self.query_thr = voxel_size, query_thr

    @property
    def clip_source(self) -> str:
        """Where the frozen 2D branch's weights came from (for reports); "none" without a 2D branch."""
        return self.bi_encoder.clip_source if self.bi_encoder is not None else "none"

    # ---- features -------------------------------------------------------------------------------
    def voxel_features(self, batch: PointBatch, xyz: torch.Tensor,
                       use_memory: bool = False) -> tuple[Voxels, torch.Tensor]:
        """Voxelise `xyz` and run the encoder: backbone (+ memory) (+ neck), or the Bi-Fusion encoder.

        Returns the voxels and their stride-1 features (M, 96).
        """
        vox = voxelize(xyz, batch.feat, batch.batch_index, batch.num_frames, self.voxel_size)
        memory = self.memory if use_memory else None
        if self.bi_encoder is not None:
            return vox, self.bi_encoder(batch, vox, memory)
        x = SparseConvTensor(vox.features, vox.indices, vox.spatial_shape, vox.batch_size)
        stem, enc = self.backbone.encode(x)
        if memory is not None:
            enc = memory(enc, vox.origin)
        out = self.backbone.decode(stem, enc)
        if self.neck is not None:
            out = self.neck(out)
        return vox, out.features

    def extract(self, batch: PointBatch, use_memory: bool = False) -> FrameFeatures:
        """Encoder (+ memory) → point features → superpoint features, split per frame."""
        bidx = batch.batch_index
        # ESAM feeds the elastic-distorted coordinates (when training) to the voxeliser, the pooling and
        # the point-mask features alike (mixformer3d.extract_feat)
        xyz = batch.voxel_coord if batch.voxel_coord is not None else batch.coord
        vox, voxel_feat = self.voxel_features(batch, xyz, use_memory)
        # index_select: its backward is one index_add; `voxel_feat[idx]`'s is a sort-based index_put
        # (~1.4 ms per 20k-point frame on the H100, 6 % of an MV training step)
        point_feat = voxel_feat.index_select(0, vox.point2voxel)
        # superpoints per frame in one reduction (a per-frame loop costs a launch per frame)
        n_sp = torch.zeros(batch.num_frames, dtype=torch.long, device=bidx.device).scatter_reduce(
            0, bidx, batch.superpoint.long(), "amax", include_self=False) + 1
        sp_base = torch.cumsum(n_sp, 0) - n_sp
        sp_global = batch.superpoint + sp_base[bidx]
        sp_feat, sp_xyz, _ = self.pooling(xyz, point_feat, sp_global, int(n_sp.sum()))
        counts = n_sp.tolist()
        pf = torch.cat([xyz.to(point_feat.dtype), point_feat], 1)
        return FrameFeatures(list(torch.split(sp_feat, counts)), list(torch.split(sp_xyz, counts)),
                             batch.split(pf), batch.split(batch.superpoint))

    def _query_ids(self, feats: FrameFeatures) -> list[torch.Tensor]:
        """All superpoints at eval; a random share U[query_thr, 1] of them in training (ESAM)."""
        ids = []
        for f in feats.sp_feats:
            n = len(f)
            if not self.training:
                ids.append(torch.arange(n, device=f.device))
                continue
            r = float(torch.empty(1).uniform_(self.query_thr, 1.0))
            ids.append(torch.randperm(n, device=f.device)[: max(1, int(n * r))].sort().values)
        return ids

    def decode(self, feats: FrameFeatures, query_ids: list[torch.Tensor] | None = None) -> dict:
        return self.decoder(feats.sp_feats, feats.point_feats, feats.sp_index, query_ids, feats.sp_xyz)

    # ---- training ---------------------------------------------------------------------------------
    def loss_sv(self, batch: PointBatch) -> dict[str, torch.Tensor]:
        """Loss terms of a batch of independent frames (each frame numbers its own instances)."""
        targets: list[FrameTargets] = [
            build_targets([i], [s], [sp], self.num_semantic, self.class_agnostic)[0]
            for i, s, sp in zip(batch.split(batch.instance), batch.split(batch.semantic), batch.split(batch.superpoint))]
        feats = self.extract(batch)
        qids = self._query_ids(feats)
        return self.criterion(self.decode(feats, qids), targets, qids)

    def loss_mv(self, clips: list[PointBatch]) -> dict[str, torch.Tensor]:
        """Loss terms of B clips given as T PointBatches (t-th frames of every clip, in clip order).

        Frames run in order through the memory (reset first); loss terms are summed over frames, and
        the merge contrastive loss is added once per clip (averaged over clips).
        """
        num_clips = clips[0].num_frames
        # clip-global instance numbering and amodal boxes over all T frames of each clip
        per_clip = []
        for b in range(num_clips):
            frames = [_select_frame(c, b) for c in clips]
            coord = torch.cat([f.coord if f.voxel_coord is None else f.voxel_coord for f in frames])
            inst = torch.cat([f.instance for f in frames])
            boxes = instance_boxes(coord, inst)
            per_clip.append(build_targets([f.instance for f in frames], [f.semantic for f in frames],
                                          [f.superpoint for f in frames], self.num_semantic, self.class_agnostic,
                                          boxes[1], boxes[0]))
        if self.memory is not None:
            self.memory.reset()
        total: dict[str, torch.Tensor] = {}
        embeds = [[] for _ in range(num_clips)]
        members = [[] for _ in range(num_clips)]
        for t, batch in enumerate(clips):
            feats = self.extract(batch, use_memory=True)
            qids = self._query_ids(feats)
            pred = self.decode(feats, qids)
            targets = [per_clip[b][t] for b in range(num_clips)]
            for k, v in self.criterion(pred, targets, qids).items():
                total[k] = total[k] + v if k in total else v
            if self.merge_head is not None:
                for b in range(num_clips):
                    embeds[b].append(self.merge_head(pred["queries"][b]))
                    members[b].append(targets[b].inst_sp_masks[:, qids[b]])
        if self.merge_head is not None:
            total["loss_merge"] = sum(merge_contrastive_loss(e, m) for e, m in zip(embeds, members)) / num_clips
        return total


def _select_frame(batch: PointBatch, i: int) -> PointBatch:
    """Frame i of a batch as its own PointBatch."""
    start = 0 if i == 0 else int(batch.offset[i - 1])
    end = int(batch.offset[i])
    sl = slice(start, end)
    pick = lambda t: None if t is None else t[sl]  # noqa: E731
    one = lambda t: None if t is None else t[i : i + 1]  # noqa: E731  per-frame fields
    return PointBatch(batch.coord[sl], batch.feat[sl], batch.offset.new_tensor([end - start]), batch.superpoint[sl],
                      pick(batch.instance), pick(batch.semantic), pick(batch.voxel_coord), one(batch.pose),
                      one(batch.clip_pix), one(batch.clip_global), one(batch.clip_valid), one(batch.image))
