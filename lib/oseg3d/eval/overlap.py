"""Intersection counts between a stack of binary masks and a point partition.

Every instance metric here needs |mask_i ∩ region_j| for predicted masks against ground-truth instances
(or mesh segments). The regions of one scene are disjoint, so each mask's counts come from one `bincount`
of the region ids of its points instead of an (n × m × N) comparison; exact integers. A row at a time
(a boolean gather, then a bincount) measured 4x faster than one `np.nonzero` over the whole stack and
15x faster than a float one-hot matmul: 8 ms for 100 masks over 150k points.
"""
from __future__ import annotations

import numpy as np

__all__ = ["as_mask_stack", "partition_intersections", "compact_ids"]


def as_mask_stack(masks: np.ndarray, num_points: int) -> np.ndarray:
    """Validate and return masks as an (n, num_points) bool array (n may be 0).

    Raises:
        ValueError: the masks are not 2-D over `num_points` columns.
    """
    masks = np.asarray(masks)
    if masks.ndim == 1 and masks.size == 0:  # np.array([]): no masks at all
        return np.zeros((0, num_points), bool)
    if masks.ndim != 2 or masks.shape[1] != num_points:
        raise ValueError(f"masks must have shape (n, {num_points}), got {masks.shape}")
    return masks if masks.dtype == bool else masks != 0


def partition_intersections(masks: np.ndarray, region: np.ndarray, num_regions: int) -> np.ndarray:
    """Count the points of each mask in each region.

    Args:
        masks: (n, N) bool.
        region: (N,) int region index per point in [0, num_regions); negative = in no region.
        num_regions: number of regions m.

    Returns:
        (n, m) int64, entry [i, j] = |masks[i] ∩ {region == j}|.
    """
    region = np.asarray(region, np.int64)
    out = np.zeros((len(masks), num_regions), np.int64)
    for i, row in enumerate(masks):  # a boolean gather per row beats one np.nonzero over all rows by ~4x
        reg = region[row]
        out[i] = np.bincount(reg[reg >= 0], minlength=num_regions)[:num_regions]
    return out


def compact_ids(values: np.ndarray, return_counts: bool = False):
    """`np.unique(values, return_inverse=True[, return_counts=True])` for integer ids.

    Ids are small non-negative integers here (instance ids, `semantic · 1000 + instance`): a `bincount`
    table replaces np.unique's sort, 5-10x faster on a 150k-point scene (the sort was half of the
    metrics' time). Falls back to np.unique for negative or huge ids.
    """
    values = np.asarray(values).ravel()
    if values.size == 0 or values.dtype.kind not in "iu" or values.min() < 0 or values.max() >= 1 << 24:
        return np.unique(values, return_inverse=True, return_counts=return_counts)
    counts = np.bincount(values)
    uniq = np.flatnonzero(counts)
    lut = np.zeros(len(counts), np.int64)
    lut[uniq] = np.arange(len(uniq))
    inverse = lut[values]
    return (uniq.astype(values.dtype), inverse, counts[uniq]) if return_counts else (uniq.astype(values.dtype), inverse)
