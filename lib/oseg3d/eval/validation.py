"""Validators: run a model over validation data and collect what the metric functions need.

Used both by training (Lightning's validation loop calls `reset`, `update(model, batch)`, `compute`)
and by the evaluate step. SV: every frame is a scene of 20,000 points (ESAM's SV protocol). MV: every
scene is streamed frame by frame through the online segmenter, and the merged instances and per-point
semantics are carried to the mesh (1-NN + segment vote) and scored against the mesh GT (ESAM's MV
protocol). Predicted masks are kept bit-packed until `compute`, so a full validation set fits in RAM.
"""
from __future__ import annotations

import os

import numpy as np
import torch

from oseg3d.data import processed
from oseg3d.data.collate import collate_frames
from oseg3d.eval.coverage import evaluate_coverage, evaluate_coverage_agnostic
from oseg3d.eval.instance_ap import SceneInstances, encode_gt_ids, evaluate_instances, evaluate_instances_agnostic, instance_classes
from oseg3d.eval.mesh_mapping import map_semantic_to_mesh, map_to_mesh
from oseg3d.eval.report import flat_metrics
from oseg3d.eval.semantic import ConfusionMatrix
from oseg3d.models.batch import PointBatch
from oseg3d.models.online import OnlineConfig, OnlineSegmenter
from oseg3d.models.postprocess import postprocess_frame
from oseg3d.scannet.labels import SCANNET20_IDS, SCANNET20_NAMES, class_mapping, scannet200_classes

__all__ = ["ScoreCollector", "SVValidator", "MVValidator", "raw_ids_of_classes"]


def raw_ids_of_classes(benchmark: str) -> np.ndarray:
    """Raw semantic id of every training class (inverse of `class_mapping`, swap included), ignore → 0."""
    ids = SCANNET20_IDS if benchmark == "scannet" else scannet200_classes()[0]
    lut = class_mapping(benchmark)
    out = np.zeros(len(ids) + 1, np.int64)
    for raw in ids:
        out[lut[raw]] = raw
    return out


class _PackedScenes:
    """Scenes' predictions with bit-packed masks, unpacked one scene at a time on access."""

    def __init__(self):
        self.items: list[tuple[np.ndarray, int, np.ndarray, np.ndarray]] = []

    def append(self, masks: np.ndarray, labels: np.ndarray, scores: np.ndarray) -> None:
        self.items.append((np.packbits(masks, axis=1), masks.shape[1], labels, scores))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> SceneInstances:
        packed, n, labels, scores = self.items[i]
        return SceneInstances(np.unpackbits(packed, axis=1, count=n).astype(bool), labels, scores)

    def __iter__(self):
        return (self[i] for i in range(len(self)))


class ScoreCollector:
    """Shared bookkeeping: predictions, GT per scene, confusion matrix; `compute` → flat metrics."""

    def __init__(self, benchmark: str, class_agnostic: bool, num_semantic: int):
        self.benchmark, self.class_agnostic, self.num_semantic = benchmark, class_agnostic, num_semantic
        self.thing_ids, self.thing_names = instance_classes(benchmark)
        self.raw_of_class = raw_ids_of_classes(benchmark)
        names = SCANNET20_NAMES if benchmark == "scannet" else scannet200_classes()[1]
        lut = class_mapping(benchmark)
        order = np.argsort([lut[r] for r in (SCANNET20_IDS if benchmark == "scannet" else scannet200_classes()[0])])
        self.sem_names = [names[i] for i in order]
        self.reset()

    def reset(self) -> None:
        self.preds, self.gt_ids, self.gt_inst, self.gt_sem = _PackedScenes(), [], [], []
        self.confusion = ConfusionMatrix(self.num_semantic, ignore_index=self.num_semantic)

    def add(self, masks, inst_labels, scores, gt_instance, gt_class, pred_class) -> None:
        """One scene: predicted masks (n, N), instance class indices, scores; GT instance ids and
        training classes per point; predicted training class per point."""
        raw_labels = np.asarray(self.thing_ids)[inst_labels] if not self.class_agnostic else np.zeros(len(inst_labels), np.int64)
        self.preds.append(masks, raw_labels, scores)
        gt_raw = self.raw_of_class[np.clip(gt_class, 0, self.num_semantic)]
        self.gt_ids.append(encode_gt_ids(gt_instance, gt_raw))
        self.gt_inst.append(gt_instance)
        self.gt_sem.append(gt_raw)
        self.confusion.update(pred_class, gt_class)

    def compute(self, workers: int = 1) -> dict[str, float]:
        """Flat metrics over every scene added; `workers` > 1 forks processes for the per-scene work."""
        w = workers
        if self.class_agnostic:
            ap = evaluate_instances_agnostic(self.preds, self.gt_ids, self.thing_ids, workers=w)
            cov = evaluate_coverage_agnostic(self.preds, self.gt_inst, self.gt_sem, self.thing_ids, workers=w)
        else:
            ap = evaluate_instances(self.preds, self.gt_ids, self.thing_ids, self.thing_names, workers=w)
            cov = evaluate_coverage(self.preds, self.gt_inst, self.gt_sem, self.thing_ids, self.thing_names, workers=w)
        sem = self.confusion.compute(self.sem_names)
        self.last = {"ap": ap, "semantic": sem, "coverage": cov}
        return flat_metrics(ap, sem, cov)


def _point_classes(sem_logits: torch.Tensor, sp_index: torch.Tensor, num_semantic: int) -> np.ndarray:
    """Per-point semantic class from per-superpoint logits (every superpoint is a query at eval)."""
    return sem_logits[:, :num_semantic].argmax(1)[sp_index].cpu().numpy()


class SVValidator(ScoreCollector):
    """Per-frame evaluation of single-view predictions (ESAM SV test: top-100, no score threshold)."""

    def __init__(self, benchmark: str, class_agnostic: bool, num_semantic: int, cfg: OnlineConfig):
        super().__init__(benchmark, class_agnostic, num_semantic)
        self.cfg = cfg

    @torch.no_grad()
    def update(self, model, batch: dict) -> None:
        b = PointBatch.from_dict(batch)
        feats = model.extract(b)
        pred = model.decode(feats, None)
        c = self.cfg
        for i, (inst, sem, sp) in enumerate(zip(b.split(b.instance), b.split(b.semantic), feats.sp_index)):
            fp = postprocess_frame(pred["cls_preds"][i].float(), pred["masks"][i].float(), class_agnostic=model.class_agnostic,
                                   topk=c.topk_insts, score_thr=c.inst_score_thr, mask_thr=c.sp_score_thr,
                                   min_points=c.npoint_thr, obj_normalization=c.obj_normalization, nms=c.nms)
            self.add(fp.masks.cpu().numpy(), fp.labels.cpu().numpy(), fp.scores.float().cpu().numpy(),
                     inst.cpu().numpy(), sem.cpu().numpy(), _point_classes(pred["sem_preds"][i].float(), sp, self.num_semantic))


class MVValidator(ScoreCollector):
    """Online evaluation: stream each scene, merge, map to the mesh, score against the mesh GT."""

    def __init__(self, benchmark: str, class_agnostic: bool, num_semantic: int, cfg: OnlineConfig, root: str):
        super().__init__(benchmark, class_agnostic, num_semantic)
        self.cfg, self.root, self.lut = cfg, root, class_mapping(benchmark)

    @torch.no_grad()
    def update(self, model, frames: list[dict]) -> None:
        device = next(model.parameters()).device
        seg = OnlineSegmenter(model, self.cfg)
        coords, labels = [], []
        for f in frames:
            b = PointBatch.from_dict(collate_frames([f])).to(device)
            seg.step(b)
            feats_sp = b.superpoint
            # semantic per point: the frame's per-superpoint predictions (all superpoints are queries)
            pred = seg.last_prediction
            labels.append(_point_classes(pred["sem_preds"][0].float(), feats_sp, self.num_semantic))
            coords.append(f["coord"])
        masks, inst_labels, scores = (t.cpu().numpy() for t in seg.result())
        mesh = processed.read_arrays(os.path.join(self.root, processed.mesh_key(frames[0]["sample_id"])))
        verts, segs = mesh["vertices"][:, :3], mesh["segment"]
        pts = np.concatenate(coords)
        mesh_masks = map_to_mesh(pts, masks.astype(bool), verts, segs)
        mesh_sem = map_semantic_to_mesh(pts, np.concatenate(labels), verts, segs)
        gt_class = self.lut[np.clip(mesh["semantic"].astype(np.int64), 0, len(self.lut) - 1)]
        self.add(mesh_masks, inst_labels.astype(np.int64), scores.astype(np.float64), mesh["instance"].astype(np.int64),
                 gt_class, mesh_sem)
