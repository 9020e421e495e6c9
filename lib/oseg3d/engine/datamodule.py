"""Data loading for training: datasets + augmentations + collate in DataLoaders built for throughput.

Persistent workers, pinned memory and prefetching keep the GPU fed. Training order and augmentations are
functions of (seed, epoch, item) (data/sampling.py), so runs are reproducible per seed, resumed or not.
"""
from __future__ import annotations

import lightning as L
import torch
from torch.utils.data import DataLoader, Subset

from oseg3d.data.collate import collate_clips, collate_frames
from oseg3d.data.sampling import EpochSampler, KeyedItems
from oseg3d.data.datasets import MVClipDataset, SVFrameDataset
from oseg3d.data.transforms import WithRng, build_train_transforms

__all__ = ["ESAMDataModule"]


class ESAMDataModule(L.LightningDataModule):
    """Train / val loaders of one processed dataset (SV frames or MV clips)."""

    def __init__(self, root: str, benchmark: str, mode: str, batch_size: int, num_frames: int = 8,
                 num_workers: int = 4, elastic: bool = True, val_max_items: int = 0, seed: int = 0,
                 clip_features: bool = False, raw_root: str = ""):
        super().__init__()
        self.root, self.benchmark, self.mode = root, benchmark, mode
        self.batch_size, self.num_frames, self.num_workers = batch_size, num_frames, num_workers
        self.elastic, self.val_max_items, self.seed = elastic, val_max_items, seed
        self.clip = {"clip_features": clip_features, "raw_root": raw_root}  # Bi-Fusion: per-frame CLIP features

    @classmethod
    def from_config(cls, d, seed: int = 0) -> "ESAMDataModule":
        """From a DataConfig (`clip_features` read with a default: older configs lack the key)."""
        return cls(d.root, d.benchmark, d.mode, d.batch_size, d.num_frames, d.num_workers, d.elastic,
                   d.val_max_items, seed, clip_features=bool(getattr(d, "clip_features", False)),
                   raw_root=getattr(d, "raw_root", "") or "")

    def setup(self, stage: str | None = None) -> None:
        tf = WithRng(build_train_transforms(self.mode, elastic=self.elastic), self.seed)
        if self.mode == "sv":
            self.train_set = SVFrameDataset(self.root, "train", self.benchmark, transform=tf, **self.clip)
            self.val_set = SVFrameDataset(self.root, "val", self.benchmark, **self.clip)
        else:
            self.train_set = MVClipDataset(self.root, "train", self.benchmark, self.num_frames, transform=tf,
                                           seed=self.seed, **self.clip)
            self.val_set = MVClipDataset(self.root, "val", self.benchmark, num_frames=-1, **self.clip)
        if self.val_max_items:
            self.val_set = Subset(self.val_set, range(min(self.val_max_items, len(self.val_set))))

    def _loader(self, ds, batch_size, shuffle, collate):
        workers = self.num_workers
        sampler = None
        if shuffle:  # order and augmentation keyed by (seed, epoch, item): a resumed run replays them
            ds, sampler = KeyedItems(ds, self.seed), EpochSampler(len(ds), self.seed)
        return DataLoader(ds, batch_size=batch_size, sampler=sampler, num_workers=workers, collate_fn=collate,
                          pin_memory=torch.cuda.is_available(), persistent_workers=workers > 0,
                          prefetch_factor=4 if workers > 0 else None, drop_last=shuffle and len(ds) > batch_size)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, self.batch_size, True, collate_frames if self.mode == "sv" else collate_clips)

    def val_dataloader(self) -> DataLoader:
        # SV: frames in batches; MV: one whole scene per item, streamed frame by frame by the validator
        if self.mode == "sv":
            return self._loader(self.val_set, self.batch_size, False, collate_frames)
        return self._loader(self.val_set, 1, False, lambda items: items[0])
