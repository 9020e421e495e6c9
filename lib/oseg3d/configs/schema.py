"""The typed schema every experiment config is checked against (OmegaConf structured config).

A YAML file may only set keys that exist here, with values of the declared type; everything else is a
ConfigError naming the key and the file. Defaults here are the seed's route ❶ SV ScanNet values; the
YAML files under this package are small deltas on `_base_/default.yaml` and on each other.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from oseg3d.models.build import ModelConfig
from oseg3d.models.online import OnlineConfig

__all__ = ["DataConfig", "OptimConfig", "ScheduleConfig", "TrainConfig", "InitConfig", "ExperimentConfig"]


@dataclass
class DataConfig:
    """Where the processed data is and how it is batched.

    Attributes:
        benchmark: scannet | scannet200 (label mapping and class set).
        mode: sv | mv.
        root: processed dataset root (create_data output); set per run.
        batch_size: frames (SV) or clips (MV) per GPU.
        num_frames: frames per MV training clip.
        num_workers: DataLoader worker processes.
        elastic: elastic distortion in training.
        val_max_items: cap on validation items (0 = all), for quick runs.
        clip_features: batches carry CLIP conv1 features (clip_pix, clip_global, clip_valid, and images
            for frames without them); the Bi-Fusion configs need this.
    """

    benchmark: str = "scannet"
    mode: str = "sv"
    root: str = ""
    batch_size: int = 16
    num_frames: int = 8
    num_workers: int = 6
    elastic: bool = True
    val_max_items: int = 0
    clip_features: bool = False


@dataclass
class OptimConfig:
    """AdamW with parameter groups: `no_decay` name fragments get no weight decay and no lr scaling."""

    lr: float = 6e-4
    weight_decay: float = 1e-2
    betas: tuple[float, float] = (0.9, 0.999)
    clip_grad: float = 10.0
    no_decay: list[str] = field(default_factory=lambda: ["pos_embed", "norm", "bn", "bias"])


@dataclass
class ScheduleConfig:
    """Cosine decay over all training iterations after a linear warmup (in iterations)."""

    epochs: int = 128
    warmup_iters: int = 1000
    warmup_ratio: float = 0.001
    min_lr_ratio: float = 0.0


@dataclass
class TrainConfig:
    """Trainer settings. `ckpt_every_steps`: also refresh last.ckpt this often (0 = epoch ends only), so a
    killed run loses at most that many steps."""

    precision: str = "bf16-mixed"
    log_every: int = 50
    keep_checkpoints: int = 3
    monitor: str = "val/all_ap_50%"
    val_every_epochs: int = 1
    max_steps: int = -1
    ckpt_every_steps: int = 200
    seed: int = 0
    accelerator: str = "auto"
    devices: int = 1


@dataclass
class InitConfig:
    """Initialise from another run's checkpoint by key mapping (partial load).

    Attributes:
        checkpoint: path / URI of a checkpoint (or a transfer step's init weights).
        mapping: source prefix → target prefix, e.g. {"backbone.": "bi_encoder.backbone3d."}; empty = same names.
    """

    checkpoint: Optional[str] = None
    mapping: dict[str, str] = field(default_factory=dict)


@dataclass
class ExperimentConfig:
    name: str = "ESAM"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: OnlineConfig = field(default_factory=OnlineConfig)
    init: InitConfig = field(default_factory=InitConfig)
