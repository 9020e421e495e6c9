"""The route ❶ DAG runs end to end locally through kfp.local's SubprocessRunner (the embedded default)."""
from __future__ import annotations


def test_route1_dag_runs_locally(tmp_path):
    from kfp import local

    from pipelines.route1 import route1

    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "root"))
    quick_sv = ["train.max_steps=2", "data.batch_size=1", "data.num_workers=0"]
    quick_mv = ["train.max_steps=1", "data.batch_size=1", "data.num_frames=3", "data.num_workers=0"]
    route1(synth_scenes=2, synth_frames=21, sv_overrides=quick_sv, mv_overrides=quick_mv)  # raises on a failed task
    root = tmp_path / "root"
    tasks = {p.name for p in root.glob("*/*") if p.is_dir()}
    assert {"create-data", "create-data-2", "train", "train-2", "transfer", "evaluate", "evaluate-2"} <= tasks
    assert list(root.glob("*/train-2/model/model_best.safetensors"))
    assert list(root.glob("*/evaluate-2/report"))
