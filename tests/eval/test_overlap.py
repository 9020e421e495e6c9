"""Helpers over point partitions: compact ids (np.unique without the sort)."""
from __future__ import annotations

import numpy as np
import pytest

from oseg3d.eval.overlap import compact_ids


@pytest.mark.parametrize("values", [np.array([5, 0, 5, 3, 1000, 3]), np.array([], np.int64), np.array([-1, 2, -1]),
                                    np.array([1 << 30, 7]), np.random.default_rng(0).integers(0, 200_000, 5000)])
def test_compact_ids_equals_np_unique(values):
    uniq, inv, counts = compact_ids(values, return_counts=True)
    ref = np.unique(values, return_inverse=True, return_counts=True)
    for a, b in zip((uniq, inv, counts), ref):
        np.testing.assert_array_equal(a, b)
