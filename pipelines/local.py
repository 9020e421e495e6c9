"""Run a pipeline on this machine with kfp.local, resume a failed run, compile, submit to a cluster.

A local run lives in `runs/<run-id>/`: `run.json` (the arguments), `kfp/` (kfp.local's pipeline root, one
folder per attempt) and `kfp/_work/` (the steps' homes: datasets, checkpoints, reports; see
oseg3d.steps.artifacts). `--resume RUN` reruns the DAG with the same arguments and workspace: finished
steps find their completion marker and skip, a half-trained step resumes from its last checkpoint.
The workspace sits under the pipeline root because DockerRunner mounts exactly that folder.
"""
import json
import os
import sys
import time
from pathlib import Path

__all__ = ["PIPELINES", "QUICK_SV", "QUICK_MV", "run_local", "compile_to", "submit", "summary_table"]

# CPU-sized schedules for the default local run: the code path of a real run, a few steps long
QUICK_SV = ["train.max_steps=4", "data.batch_size=2", "data.num_workers=0", "schedule.warmup_iters=2",
            "data.val_max_items=4", "train.keep_checkpoints=1"]
QUICK_MV = ["train.max_steps=2", "data.batch_size=1", "data.num_frames=4", "data.num_workers=0",
            "schedule.warmup_iters=1", "data.val_max_items=1", "train.keep_checkpoints=1"]


PIPELINES = ("route1", "routes")


def _module(name: str):
    """The pipeline module: route1 (❶ only) or routes (❶ → ❷ → ❸)."""
    import importlib

    if name not in PIPELINES:
        raise ValueError(f"unknown pipeline {name!r} (known: {', '.join(PIPELINES)})")
    return importlib.import_module(f"pipelines.{name}")


def run_local(args: dict, runs_dir: str = "runs", resume: str = "", runner: str = "subprocess",
              pipeline: str = "route1") -> Path:
    """Run `pipeline` with `args` (its parameters) locally; returns the run folder.

    Args:
        args: pipeline parameters (ignored on resume: the run's own are used).
        runs_dir: parent of run folders.
        resume: run id to continue.
        runner: "subprocess" (this environment) or "docker" (our image, through DockerRunner).
        pipeline: which DAG.
    """
    from kfp import local

    if resume:
        run = Path(runs_dir) / resume
        if not (run / "run.json").is_file():
            raise FileNotFoundError(f"{run / 'run.json'}: no such run to resume. Fix: pass a folder name from "
                                    f"{runs_dir}/ (its run.json holds the arguments)")
        saved = json.loads((run / "run.json").read_text())
        pipeline, args = saved["pipeline"], saved["args"]
        print(f"[oseg3d] resuming run {resume}: finished steps are skipped, training continues", file=sys.stderr)
    else:
        run = Path(runs_dir) / time.strftime("%Y%m%d-%H%M%S")
        run.mkdir(parents=True, exist_ok=False)
        (run / "run.json").write_text(json.dumps({"pipeline": pipeline, "args": args}, indent=2))
    root = (run / "kfp").resolve()
    args = {**args, "workspace": str(root / "_work")}
    if runner == "docker":
        chosen = local.DockerRunner(user=f"{os.getuid()}:{os.getgid()}")
    else:
        chosen = local.SubprocessRunner(use_venv=False)
    local.init(runner=chosen, pipeline_root=str(root), raise_on_error=True)
    getattr(_module(pipeline), pipeline)(**args)
    return run


def _latest_attempt(run: Path) -> Path:
    attempts = sorted((p for p in (run / "kfp").iterdir() if p.is_dir() and not p.name.startswith("_")),
                      key=lambda p: p.stat().st_mtime)
    return attempts[-1]


def summary_table(run: Path) -> tuple[str, list[Path]]:
    """The compare step's Markdown table of the last attempt and the HTML reports it produced."""
    attempt = _latest_attempt(run)
    table = next(attempt.glob("compare*/table"), None)
    md = table.read_text() if table else "(no compare output: the run did not finish)"
    htmls = sorted(attempt.glob("compare*/table_html")) + sorted(attempt.glob("evaluate*/html_report"))
    return md, htmls


def compile_to(path: str, pipeline: str = "route1", data_pvc: str = "", s3_secret: str = "oseg3d-s3") -> str:
    """Write the KFP IR YAML of `pipeline` with these cluster options."""
    from kfp import compiler

    from pipelines.cluster import ClusterOptions

    opts = ClusterOptions(data_pvc=data_pvc, s3_secret=s3_secret)
    compiler.Compiler().compile(_module(pipeline).build(opts), package_path=path)
    return path


def submit(package: str, host: str, args: dict, experiment: str = "oseg3d", run_name: str = "") -> str:
    """Submit a compiled package with kfp.Client; returns the run id. The token, if any, comes from
    KFP_TOKEN (never from code or arguments)."""
    import kfp

    client = kfp.Client(host=host, existing_token=os.environ.get("KFP_TOKEN") or None)
    result = client.create_run_from_pipeline_package(package, arguments=args, experiment_name=experiment,
                                                     run_name=run_name or None, enable_caching=True)
    return result.run_id
