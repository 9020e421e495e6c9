"""Model configuration and the plain-code builder (no registry): config → modules → ESAM.

Optional parts are composed with `if`s: the MV memory adapters, box head and merge head now; the
Tiny-SA neck (route ❷) and the 2D branch (route ❸) join the same way later, so no subclass per
combination is ever needed.
"""
from __future__ import annotations

from dataclasses import dataclass

from oseg3d.models.criterion import Criterion
from oseg3d.models.decoder import QueryDecoder
from oseg3d.models.esam import ESAM
from oseg3d.models.memory import MultilevelMemory
from oseg3d.models.merge_head import MergeHead
from oseg3d.models.pooling import GeoAwarePooling
from oseg3d.models.resunet import PLANES, Res16UNet34C

__all__ = ["ModelConfig", "build_model", "count_parameters"]


@dataclass
class ModelConfig:
    """What the model is made of. Defaults: ScanNet class-aware SV (ESAM_sv_3d_scannet).

    Attributes:
        num_classes: instance classes (18 ScanNet things; 1 when class-agnostic).
        num_semantic: semantic classes (20 / 200).
        class_agnostic: every thing instance is class 0 (ESAM's ScanNet200 protocol).
        online: MV model: memory adapters, box head and merge head.
        memory_queue: frames the memory keeps (-1 = all).
        merge_norm: "batch" (ESAM) or "layer" (ESAM-E) in the merge head.
        bbox_head: predict boxes (online configs); None = follow `online`.
        voxel_size: metres per voxel.
        query_thr: lower bound of the random share of superpoints used as queries in training.
        dice_scale: multiplier of the final layer's Dice loss (the seed: ×4 when the batch is < 4).
    """

    num_classes: int = 18
    num_semantic: int = 20
    class_agnostic: bool = False
    online: bool = False
    memory_queue: int = -1
    merge_norm: str = "batch"
    bbox_head: bool | None = None
    voxel_size: float = 0.02
    in_channels: int = 3
    query_thr: float = 0.5
    dice_scale: float = 1.0
    bn_momentum: float = 0.02


def build_model(cfg: ModelConfig) -> ESAM:
    """Compose an ESAM model from `cfg`."""
    bbox = cfg.online if cfg.bbox_head is None else cfg.bbox_head
    num_classes = 1 if cfg.class_agnostic else cfg.num_classes
    backbone = Res16UNet34C(cfg.in_channels, cfg.bn_momentum)
    return ESAM(
        backbone=backbone,
        pooling=GeoAwarePooling(backbone.out_channels),
        decoder=QueryDecoder(in_channels=backbone.out_channels, num_classes=num_classes,
                             num_semantic=cfg.num_semantic, bbox_head=bbox),
        criterion=Criterion(num_classes, cfg.num_semantic, dice_scale=cfg.dice_scale),
        memory=MultilevelMemory(PLANES[:4], queue=cfg.memory_queue) if cfg.online else None,
        merge_head=MergeHead(256, 256, norm=cfg.merge_norm) if cfg.online else None,
        num_semantic=cfg.num_semantic,
        class_agnostic=cfg.class_agnostic,
        voxel_size=cfg.voxel_size,
        query_thr=cfg.query_thr,
    )


def count_parameters(model: ESAM) -> dict[str, int]:
    """Parameters per component (the table `oseg3d model params` prints)."""
    parts = {"backbone": model.backbone, "memory": model.memory, "decoder": model.decoder,
             "merge_head": model.merge_head, "pooling": model.pooling}
    out = {k: sum(p.numel() for p in m.parameters()) for k, m in parts.items() if m is not None}
    out["total"] = sum(p.numel() for p in model.parameters())
    return out
