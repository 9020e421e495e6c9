"""`oseg3d pipeline ...`: run the KFP DAG locally (kfp.local), resume it, compile it, submit it."""
from __future__ import annotations

from typing import Optional

import typer

__all__ = ["pipeline_app"]

pipeline_app = typer.Typer(no_args_is_help=True, help="The KFP pipeline: run locally, compile, submit.")


def _pipeline_args(pipeline: str, raw: str, scenes: int, frames: int, points: int, benchmark: str,
                   sv_set: list[str], mv_set: list[str], quick: bool, gpus: int, clip_weights: str) -> dict:
    from pipelines.local import QUICK_MV, QUICK_SV

    args = {
        "raw_uri": raw, "synth_scenes": scenes, "synth_frames": frames, "points_per_frame": points,
        "sv_kind": f"{benchmark}_sv", "mv_kind": f"{benchmark}_mv",
        "sv_overrides": (QUICK_SV if quick else []) + list(sv_set),
        "mv_overrides": (QUICK_MV if quick else []) + list(mv_set), "gpus": gpus,
    }
    if pipeline == "route1":
        return {**args, "sv_config": f"ESAM_sv_3d_{benchmark}", "mv_config": f"ESAM_online_3d_{benchmark}"}
    configs = {f"r{i}_{m}_config": f"ESAM_{'sv' if m == 'sv' else 'online'}_{r}_{benchmark}"
               for i, r in ((1, "3d"), (2, "3dtsa"), (3, "bifusion")) for m in ("sv", "mv")}
    return {**args, **configs, "benchmark": benchmark, "clip_weights": clip_weights}


@pipeline_app.command("run")
def run(
    local: bool = typer.Option(True, "--local/--cluster", help="Run here with kfp.local (the only mode of `run`)."),
    pipeline: str = typer.Option("route1", help="route1 (❶) | routes (❶ → ❷ → ❸ with precompute_clip)."),
    runner: str = typer.Option("subprocess", help="subprocess (this environment) | docker (our image)."),
    resume: str = typer.Option("", help="Run id under --runs-dir to continue: finished steps are skipped."),
    runs_dir: str = typer.Option("runs", help="Where run folders go."),
    raw: str = typer.Option("", help="Raw ScanNet root (path or s3://); empty = synthesise a small world."),
    scenes: int = typer.Option(3, help="Synthetic world: scenes."),
    frames: int = typer.Option(41, help="Synthetic world: frames per scene."),
    points: int = typer.Option(20000, help="Points sampled per frame (ESAM: 20,000)."),
    benchmark: str = typer.Option("scannet200", help="scannet200 (class-agnostic, ESAM's) | scannet."),
    sv_set: list[str] = typer.Option([], help="SV config override key=value (repeatable)."),
    mv_set: list[str] = typer.Option([], help="MV config override key=value (repeatable)."),
    quick: bool = typer.Option(True, help="CPU-sized schedules (a few steps per stage); --no-quick = the configs'."),
    clip_weights: str = typer.Option("", help="OpenAI ViT-B/16 open_clip state dict (path or s3://) for route ❸; "
                                              "empty = random conv1, labelled random-init in every report."),
) -> None:
    """Run the whole DAG on this machine; prints the routes' metrics table and where the reports are."""
    if not local:
        raise typer.BadParameter("use `oseg3d pipeline submit` for a cluster")
    from pipelines.local import run_local, summary_table

    args = _pipeline_args(pipeline, raw, scenes, frames, points, benchmark, sv_set, mv_set, quick, 0, clip_weights)
    run_dir = run_local(args, runs_dir, resume, runner, pipeline)
    md, htmls = summary_table(run_dir)
    typer.echo("\n" + md)
    typer.echo(f"run: {run_dir}  (resume with: oseg3d pipeline run --local --resume {run_dir.name})")
    for h in htmls:
        typer.echo(f"report: {h}")


@pipeline_app.command("compile")
def compile_(
    output: str = typer.Option("pipeline.yaml", "-o", "--output", help="Where to write the KFP IR YAML."),
    pipeline: str = typer.Option("route1", help="route1 (❶) | routes (❶ → ❷ → ❸)."),
    data_pvc: str = typer.Option("", help="PVC with raw ScanNet to mount on create_data (see manifests/)."),
    s3_secret: str = typer.Option("oseg3d-s3", help="Secret with the object-store credentials ('' = none)."),
) -> None:
    """Write the pipeline's KFP IR YAML (upload it in the UI or submit it with `kfp run create`)."""
    from pipelines.local import compile_to

    typer.echo(compile_to(output, pipeline, data_pvc=data_pvc, s3_secret=s3_secret))


@pipeline_app.command("submit")
def submit(
    host: str = typer.Option(..., envvar="KFP_ENDPOINT", help="KFP API endpoint (or KFP_ENDPOINT)."),
    package: str = typer.Option("pipeline.yaml", help="Compiled package (from `oseg3d pipeline compile`)."),
    experiment: str = typer.Option("oseg3d"),
    run_name: Optional[str] = typer.Option(None),
    param: list[str] = typer.Option([], "--param", "-p", help="Pipeline parameter key=value (repeatable)."),
) -> None:
    """Submit a compiled pipeline with kfp.Client (token from KFP_TOKEN)."""
    import yaml

    from pipelines.local import submit as do_submit

    args = {}
    for p in param:
        k, sep, v = p.partition("=")
        if not sep:
            raise typer.BadParameter(f"{p!r}: expected key=value")
        args[k] = yaml.safe_load(v)  # numbers, lists (e.g. '["train.max_steps=10"]') and strings
    typer.echo(do_submit(package, host, args, experiment, run_name or ""))
