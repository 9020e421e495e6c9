"""`bench clip` runs end to end on the CPU at toy size: the product pass writes every frame's features,
the steady and per-stage passes time the repeated frame list."""
from __future__ import annotations

import json

from oseg3d.bench.clip import bench_clip


def test_bench_clip_toy(tmp_path):
    res = bench_clip(tmp_path, str(tmp_path / "clip.json"), scenes=1, frames=21, workers=2, points=2000,
                     batch_size=8, min_frames=30)
    runs = res["runs"]
    assert set(runs) == {"product", "steady", "decode", "conv1", "write"}
    n = runs["product"]["frames"]
    assert n == len(list((tmp_path / "dense_scannet200_mv" / "clip_feat").rglob("*.safetensors"))) > 0
    assert runs["steady"]["frames"] >= 30 and runs["decode"]["frames"] == runs["steady"]["frames"]
    assert all(r["frames_per_s"] > 0 for r in runs.values())
    assert "| steady |" in (tmp_path / "clip.md").read_text()
    assert json.loads((tmp_path / "clip.json").read_text())["batch_size"] == 8
