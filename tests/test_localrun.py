"""Route ❶ end to end on the CPU: a 2-scene world, SV and MV trained a few steps, evaluated."""
from __future__ import annotations

import json
import math

from oseg3d.localrun import run_route1


def test_route1_end_to_end_on_two_scenes(tmp_path):
    quick_sv = ["train.max_steps=2", "data.batch_size=1", "data.num_workers=0"]
    quick_mv = ["train.max_steps=1", "data.batch_size=1", "data.num_frames=3", "data.num_workers=0"]
    results = run_route1(str(tmp_path), scenes=2, frames=21, workers=1, sv_overrides=quick_sv,
                         mv_overrides=quick_mv, baseline=False)
    assert set(results) == {"SV", "MV"}
    for stage in ("SV", "MV"):
        assert {"all_ap", "all_ap_50%", "miou", "mcov", "mrec"} <= set(results[stage])
        assert not math.isnan(results[stage]["miou"])
    for f in ("train_sv/model_best.safetensors", "train_mv/model_best.safetensors", "transfer_sv_mv/init.safetensors",
              "eval_sv/report.md", "eval_mv/report.md", "eval_mv/metrics.json", "eval_mv/metrics.csv",
              "eval_sv/per_class_ap.png", "summary.md"):
        assert (tmp_path / f).is_file(), f
    init = json.loads((tmp_path / "train_mv" / "summary.json").read_text())["init"]
    assert init["loaded"] > 400 and init["unexpected"] == 0  # the SV weights went into the MV model
