"""The pipeline compiles to KFP IR, loads back with the SDK, asks for GPUs only on GPU steps, and compiling
imports no heavy library."""
from __future__ import annotations

import pkgutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).parents[2]
GPU_STEPS = ("train", "evaluate")


def _compiled(tmp_path, **kw) -> tuple[dict, dict]:
    """(pipeline spec, kubernetes platform executors): kfp-kubernetes adds a second YAML document."""
    from pipelines.local import compile_to

    docs = list(yaml.safe_load_all(open(compile_to(str(tmp_path / "pipeline.yaml"), **kw))))
    platform = docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"] if len(docs) > 1 else {}
    return docs[0], platform


def test_route1_compiles_loads_back_and_keeps_its_shape(tmp_path):
    from kfp import components

    spec, _ = _compiled(tmp_path)
    tasks = spec["root"]["dag"]["tasks"]
    assert len(tasks) == 8  # 2× create_data, 2× train, transfer, 2× evaluate, compare
    images = {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()}
    assert len(images) == 1 and images.pop().startswith("oseg3d:")
    assert tasks["train-2"]["dependentTasks"] == ["create-data-2", "transfer"]
    assert tasks["train"]["retryPolicy"]["maxRetryCount"] == 2
    assert set(tasks["compare"]["dependentTasks"]) == {"evaluate", "evaluate-2"}
    loaded = components.load_component_from_file(str(tmp_path / "pipeline.yaml"))
    assert {"raw_uri", "workspace", "sv_overrides", "gpus"} <= set(loaded.component_spec.inputs)


def test_gpus_shm_and_node_selection_only_on_gpu_steps(tmp_path):
    spec, k8s = _compiled(tmp_path, data_pvc="scannet-data")
    tasks = spec["root"]["dag"]["tasks"]
    executors = spec["deploymentSpec"]["executors"]
    for name, task in tasks.items():
        executor = spec["components"][task["componentRef"]["name"]]["executorLabel"]
        resources = executors[executor]["container"].get("resources", {})
        on_gpu = name.split("-")[0] in GPU_STEPS
        assert ("accelerator" in resources) == on_gpu, name
        platform = k8s.get(executor, {})
        assert ("nodeSelector" in platform) == on_gpu, name
        assert any(m["mountPath"] == "/dev/shm" for m in platform.get("emptyDirMounts", [])) == on_gpu, name
        env = {e["name"]: e["value"] for e in executors[executor]["container"].get("env", [])}
        if on_gpu:  # NVLink multicast stays off wherever a step may start NCCL
            assert env.get("NCCL_NVLS_ENABLE") == "0" and env.get("TORCH_SYMM_MEM_DISABLE_MULTICAST") == "1", name
            assert env.get("NVSHMEM_DISABLE_NVLS") == "1", name
        if not name.startswith("compare"):  # steps that touch step homes get the object-store Secret (optional)
            assert platform.get("secretAsEnv"), name
        if name.startswith("create-data"):
            assert platform["pvcMount"][0]["mountPath"] == "/data/scannet"


def test_no_secret_in_the_compiled_pipeline(tmp_path):
    from pipelines.local import compile_to

    text = open(compile_to(str(tmp_path / "p.yaml"))).read()
    for needle in ("AWS_SECRET_ACCESS_KEY=", "minioadmin", "password"):
        assert needle not in text


def test_components_and_pipelines_import_no_heavy_libraries():
    mods = [f"{pkg}.{m.name}" for pkg in ("components", "pipelines")
            for m in pkgutil.iter_modules([str(REPO / pkg)])]
    code = (f"import sys, importlib; [importlib.import_module(m) for m in {mods!r}]; "
            "heavy = [m for m in ('torch', 'spconv', 'numpy', 'oseg3d') if m in sys.modules]; "
            "assert not heavy, heavy")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=str(REPO))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len(mods) >= 6
