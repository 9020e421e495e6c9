"""Scoring over forked processes gives exactly the single-process numbers."""
from __future__ import annotations

import numpy as np
import pytest

from oseg3d.bench.eval import synthetic_scene
from oseg3d.eval.validation import ScoreCollector


@pytest.mark.parametrize("benchmark, agnostic, nsem", [("scannet200", True, 200), ("scannet", False, 20)])
def test_forked_scoring_equals_serial(benchmark, agnostic, nsem):
    rng = np.random.default_rng(0)
    col = ScoreCollector(benchmark, agnostic, nsem)
    for _ in range(6):
        masks, labels, scores, inst, cls, pred = synthetic_scene(rng, 3000, 6, 15, nsem)
        if not agnostic:
            labels = rng.integers(0, len(col.thing_ids), len(masks))
        col.add(masks, labels, scores, inst, cls, pred)
    serial = col.compute(workers=1)
    assert col.compute(workers=3) == serial
    assert serial["all_ap_50%"] > 0
