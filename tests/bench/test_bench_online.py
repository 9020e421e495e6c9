"""`bench online` runs end to end on the CPU at toy size and checks the prepared model against the
unprepared fp32 one (the equality the GPU run reports)."""
from __future__ import annotations

import json

from oseg3d.bench.online import bench_online


def test_bench_online_toy(tmp_path):
    res = bench_online(tmp_path, str(tmp_path / "online.json"), ("3d",), scenes=2, frames=21, workers=1,
                       points=2000, stream_frames=2)
    row = res["routes"]["3d"]
    assert row["max_rel_err_vs_fp32"] < 1e-4  # CPU: fp32 both sides, only the BN fold differs
    assert set(row["components_ms_p50"]) == {"backbone", "memory", "decoder", "postprocess", "merge"}
    assert row["online"]["n"] == 2 and row["naive_online"]["n"] == 2 and row["spconv_online"]["n"] == 2
    assert json.loads((tmp_path / "online.json").read_text())["points_per_frame"] == 2000
    assert "| ❶ 3D |" in (tmp_path / "online.md").read_text()
