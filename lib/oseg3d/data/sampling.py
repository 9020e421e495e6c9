"""Reproducible training order and augmentation: every random choice is a function of (seed, epoch, item).

A resumed run must replay exactly what the uninterrupted run would have done. Lightning restores weights,
optimiser and counters, but not the RNG streams of DataLoader workers or the main process, which have
advanced differently. So the order of epoch e is a permutation seeded by (seed, e), each item's
augmentation generator is keyed by (seed, e, index), and the main process's torch RNG is reseeded at each
epoch start (see engine.trainer); nothing depends on how the process got there.
"""
from __future__ import annotations

import torch
from torch.utils.data import Dataset, Sampler

__all__ = ["EpochSampler", "KeyedItems", "epoch_seed"]


def epoch_seed(seed: int, epoch: int, index: int = -1) -> int:
    """A 63-bit seed from (seed, epoch, index)."""
    h = (seed * 1_000_003 + epoch) * 1_000_033 + index + 1
    return h & 0x7FFF_FFFF_FFFF_FFFF


class EpochSampler(Sampler):
    """Yields (epoch, index) keys; the shuffled order depends only on (seed, epoch)."""

    def __init__(self, n: int, seed: int = 0, shuffle: bool = True):
        self.n, self.seed, self.shuffle, self.epoch, self._skip = n, seed, shuffle, 0, 0
        # the trainer may supply the epoch at iteration time: Lightning's set_epoch value is one ahead
        # after a resume from an end-of-epoch checkpoint
        self.epoch_fn = None

    def skip_once(self, k: int) -> None:
        """Start the next pass k items in (a mid-epoch resume continues where the checkpoint was taken)."""
        self._skip = k

    def set_epoch(self, epoch: int) -> None:  # Lightning calls this before each epoch
        self.epoch = epoch

    def __iter__(self):
        if self.epoch_fn is not None:
            self.epoch = self.epoch_fn()
        order = range(self.n)
        if self.shuffle:
            g = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch))
            order = torch.randperm(self.n, generator=g).tolist()
        skip, self._skip = self._skip, 0
        return ((self.epoch, i) for i in list(order)[skip:])

    def __len__(self) -> int:
        return self.n


class KeyedItems(Dataset):
    """Wraps a dataset whose transforms draw from `worker_generator` (keyed on torch's initial seed): item
    (epoch, i) is produced under torch seed `epoch_seed(seed, epoch, i)`, and the caller's RNG state is
    restored afterwards (with num_workers=0 this runs in the training process)."""

    def __init__(self, dataset: Dataset, seed: int = 0):
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        epoch, i = key if isinstance(key, tuple) else (0, key)
        state = torch.get_rng_state()
        torch.manual_seed(epoch_seed(self.seed, epoch, i))
        try:
            return self.dataset[i]
        finally:
            torch.set_rng_state(state)
