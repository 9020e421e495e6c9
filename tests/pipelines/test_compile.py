"""The route ❶ pipeline compiles to KFP IR, and compiling imports no heavy library."""
from __future__ import annotations

import subprocess
import sys

import yaml


def test_route1_compiles_with_our_image(tmp_path):
    from pipelines.route1 import compile_pipeline

    spec = yaml.safe_load(open(compile_pipeline(str(tmp_path / "route1.yaml"))))
    tasks = spec["root"]["dag"]["tasks"]
    assert len(tasks) == 7  # 2× create_data, 2× train, transfer, 2× evaluate
    images = {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()}
    assert len(images) == 1 and images.pop().startswith("oseg3d:")
    assert tasks["train-2"]["dependentTasks"] == ["create-data-2", "transfer"]
    assert tasks["train"]["retryPolicy"]["maxRetryCount"] == 2


def test_components_and_pipelines_import_no_heavy_libraries():
    code = ("import sys, components.route1, pipelines.route1; "
            "heavy = [m for m in ('torch', 'spconv', 'numpy', 'oseg3d.steps') if m in sys.modules]; "
            "assert not heavy, heavy")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=str(__import__("pathlib").Path(__file__).parents[2]))
    assert proc.returncode == 0, proc.stderr[-2000:]
