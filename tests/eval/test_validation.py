"""The validators' glue: class ids back to raw ids, and an oracle scoring perfectly end to end."""
from __future__ import annotations

import numpy as np

from oseg3d.eval.validation import ScoreCollector, raw_ids_of_classes
from oseg3d.models.online import OnlineConfig  # noqa: F401  (the validators' config type)
from oseg3d.scannet.labels import class_mapping


def test_raw_ids_invert_the_class_mapping_with_the_scannet200_swap():
    raw = raw_ids_of_classes("scannet200")
    assert raw[0] == 1 and raw[1] == 3 and raw[2] == 2  # wall, floor, chair after the 2↔3 swap
    lut = class_mapping("scannet200")
    assert all(lut[raw[c]] == c for c in range(200)) and raw[200] == 0
    assert list(raw_ids_of_classes("scannet")[:3]) == [1, 2, 3]


def _oracle_scene(rng, n=3000):
    inst = rng.integers(0, 5, n)  # instance 0 = none
    cls = np.where(inst == 0, 0, 2 + inst)  # a thing class per instance (wall = class 0 for instance 0)
    masks = np.stack([inst == i for i in range(1, 5)])
    return inst, cls, masks


def test_oracle_predictions_score_perfectly_class_aware_and_agnostic():
    rng = np.random.default_rng(0)
    for agnostic, bench, nsem in ((False, "scannet", 20), (True, "scannet200", 200)):
        col = ScoreCollector(bench, agnostic, nsem)
        for _ in range(2):
            inst, cls, masks = _oracle_scene(rng)
            col.add(masks, cls[[np.flatnonzero(inst == i)[0] for i in range(1, 5)]] - 2, np.ones(4), inst, cls, cls)
        m = col.compute()
        assert m["all_ap"] == 1.0 and m["all_ap_50%"] == 1.0 and m["miou"] == 1.0
        assert m["mcov"] == 1.0 and m["mrec"] == 1.0 and m["mprec"] == 1.0
