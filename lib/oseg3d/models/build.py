"""Model configuration and the plain-code builder (no registry): config → modules → ESAM.

Optional parts are composed with `if`s: the MV memory adapters, box head and merge head, the Tiny-SA
neck (route ❷) and the Bi-Fusion encoder with its frozen CLIP 2D branch (route ❸), so no subclass per
combination is ever needed.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from oseg3d.clip.conv1 import load_clip_conv1
from oseg3d.errors import ConfigError
from oseg3d.models.bifusion import BiFusionEncoder
from oseg3d.models.criterion import Criterion
from oseg3d.models.decoder import QueryDecoder
from oseg3d.models.esam import ESAM
from oseg3d.models.gather_conv import ENGINES, use_gather_convs
from oseg3d.models.memory import MultilevelMemory
from oseg3d.models.merge_head import MergeHead
from oseg3d.models.pooling import GeoAwarePooling
from oseg3d.models.resunet import PLANES, Res16UNet34C
from oseg3d.models.tiny_sa import TinySA

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
        neck: "none" | "tiny_sa" (two Tiny-SA blocks after the U-Net decoder; routes ❷ ❸).
        tsa_patch_size, tsa_heads, tsa_mlp_ratio: Tiny-SA voxels per attention window, heads, MLP width.
        encoder: "3d" (the U-Net) | "bifusion" (U-Net fused with frozen CLIP conv1 features; route ❸).
        fuse_2d_to_3d, fuse_3d_to_2d, film_global: the Bi-Fusion links (see models/bifusion.py).
        fuse_deeper: also add the sampled 2D features at the four encoder levels, not only the stem.
        clip_weights: path / s3:// URI of an open_clip ViT-B/16 state dict for the frozen 2D branch.
        clip_random_init: without clip_weights, a random conv1 (smoke runs; reports say so).
        sparse_engine: how training runs the sparse convs: "spconv" (its implicit-GEMM kernels) or
            "gather" (gather + GEMM in PyTorch, `models/gather_conv.py`). Same parameters and state dict
            either way. Inference always converts to gather (`prepare_for_inference`). spconv is the
            training default: at 16 frames per batch the gathered (N, taps·C) matrices make a gather step
            GPU-bound (SV 51 vs 65 frames/s on the H100, docs/PERFORMANCE.md).
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
    neck: str = "none"
    tsa_patch_size: int = 128
    tsa_heads: int = 6
    tsa_mlp_ratio: float = 2.0
    encoder: str = "3d"
    fuse_2d_to_3d: bool = True
    fuse_3d_to_2d: bool = True
    film_global: bool = True
    fuse_deeper: bool = False
    clip_weights: Optional[str] = None
    clip_random_init: bool = False
    sparse_engine: str = "spconv"


def _choice(key: str, value: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ConfigError(f"model.{key}", f"unknown value {value!r}", f"use one of {', '.join(allowed)}")
    return value


def _bi_encoder(cfg: ModelConfig, backbone: Res16UNet34C, neck: TinySA | None) -> BiFusionEncoder:
    """The Bi-Fusion encoder with its frozen CLIP conv1 (weights from `clip_weights`, or random on request)."""
    if not cfg.clip_weights and not cfg.clip_random_init:
        raise ConfigError("model.clip_weights", "the Bi-Fusion encoder needs CLIP ViT-B/16 weights for its frozen 2D "
                          "branch and none are set", "set model.clip_weights=<path or s3:// URI of an open_clip "
                          "ViT-B-16 state dict>, or model.clip_random_init=true for a smoke run (NOT CLIP features)")
    if cfg.fuse_3d_to_2d and not cfg.fuse_2d_to_3d:
        raise ConfigError("model.fuse_3d_to_2d", "refines the 2D map that model.fuse_2d_to_3d samples, which is off",
                          "set model.fuse_3d_to_2d=false too, or model.fuse_2d_to_3d=true")
    if cfg.fuse_deeper and not cfg.fuse_2d_to_3d:
        raise ConfigError("model.fuse_deeper", "needs model.fuse_2d_to_3d", "set model.fuse_2d_to_3d=true")
    clip2d, source = load_clip_conv1(cfg.clip_weights, allow_random_init=cfg.clip_random_init)
    return BiFusionEncoder(backbone, clip2d, neck, fuse_2d_to_3d=cfg.fuse_2d_to_3d, fuse_3d_to_2d=cfg.fuse_3d_to_2d,
                           film_global=cfg.film_global, fuse_deeper=cfg.fuse_deeper, clip_source=source)


def build_model(cfg: ModelConfig) -> ESAM:
    """Compose an ESAM model from `cfg`."""
    bbox = cfg.online if cfg.bbox_head is None else cfg.bbox_head
    num_classes = 1 if cfg.class_agnostic else cfg.num_classes
    backbone = Res16UNet34C(cfg.in_channels, cfg.bn_momentum)
    neck = None
    if _choice("neck", cfg.neck, ("none", "tiny_sa")) == "tiny_sa":
        neck = TinySA(backbone.out_channels, 2, cfg.tsa_heads, cfg.tsa_patch_size, cfg.tsa_mlp_ratio)
    bi_encoder = None
    if _choice("encoder", cfg.encoder, ("3d", "bifusion")) == "bifusion":
        bi_encoder = _bi_encoder(cfg, backbone, neck)
    model = ESAM(
        backbone=backbone if bi_encoder is None else None,
        neck=neck if bi_encoder is None else None,
        bi_encoder=bi_encoder,
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
    if _choice("sparse_engine", cfg.sparse_engine, ENGINES) == "gather":
        use_gather_convs(model)
    return model


def count_parameters(model: ESAM) -> dict[str, int]:
    """Parameters per component (the table `oseg3d model params` prints).

    Route ❸: "backbone" and "neck" are the Bi-Fusion encoder's 3D branch, "clip2d" its frozen conv1 and
    "bifusion" the fusion layers (conv_reduce, 2D↔3D projections, FiLM); "trainable" then excludes clip2d.
    """
    bi = model.bi_encoder
    numel = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    parts = {"backbone": bi.backbone3d if bi else model.backbone, "neck": bi.neck if bi else model.neck,
             "memory": model.memory, "decoder": model.decoder, "merge_head": model.merge_head, "pooling": model.pooling}
    out = {k: numel(m) for k, m in parts.items() if m is not None}
    if bi is not None:
        out["clip2d"] = numel(bi.clip2d)
        out["bifusion"] = numel(bi) - out["backbone"] - out.get("neck", 0) - out["clip2d"]
    out["total"] = numel(model)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if trainable != out["total"]:
        out["trainable"] = trainable
    return out
