"""The `oseg3d` command: every pipeline step is also a CLI command running the same library code."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Annotated, Optional

import typer

from oseg3d.errors import OsegError

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks: print a table, write JSON.")
app.add_typer(bench_app, name="bench")

from oseg3d.cli_pipeline import pipeline_app  # noqa: E402

app.add_typer(pipeline_app, name="pipeline")

KINDS = ("scannet_sv", "scannet_mv", "scannet200_sv", "scannet200_mv")


def _fail(e: OsegError) -> None:
    typer.secho(f"error: {e}", fg="red", err=True)
    raise typer.Exit(2)


def _parse_defects(items: list[str]) -> dict[str, int]:
    out = {}
    for it in items:
        k, _, v = it.partition("=")
        out[k] = int(v or 1)
    return out


@app.command()
def synth(
    out: str = typer.Argument(..., help="Folder or s3:// prefix for the raw ScanNet-layout world."),
    scenes: int = typer.Option(3, help="Number of scenes."),
    frames: int = typer.Option(41, help="Exported frames per scene (raw indices 0, 20, 40, ...)."),
    mesh_resolution: float = typer.Option(0.05, help="Mesh triangle spacing in metres."),
    seed: int = typer.Option(0),
    defect: list[str] = typer.Option([], help="Inject defects, e.g. --defect nan_pose=1 --defect corrupt_png=2."),
    workers: int = typer.Option(1, help="Scenes rendered in parallel."),
) -> None:
    """Write a synthetic world in ScanNet v2's raw layout (scans/, 2D/, label TSV, split lists)."""
    from oseg3d import storage
    from oseg3d.scannet.synth import SynthSpec, write_world

    spec = SynthSpec(scenes=scenes, frames=frames, mesh_resolution=mesh_resolution, seed=seed,
                     defects=_parse_defects(defect))
    try:
        if storage.is_s3(out):
            with tempfile.TemporaryDirectory() as tmp:
                desc = write_world(tmp, spec, workers)
                storage.upload_tree(tmp, out, workers=8)
        else:
            desc = write_world(out, spec, workers)
    except (OsegError, ValueError) as e:
        _fail(e if isinstance(e, OsegError) else OsegError("synth", str(e)))
    typer.echo(f"wrote {len(desc['scenes'])} scenes to {out} (train {len(desc['splits']['train'])}, "
               f"val {len(desc['splits']['val'])}, defects {len(desc['defects'])})")


@app.command("create-data")
def create_data_cmd(
    kind: str = typer.Argument(..., help="scannet_sv | scannet_mv | scannet200_sv | scannet200_mv"),
    raw: str = typer.Option(..., help="Raw ScanNet root (folder or s3://bucket/prefix)."),
    out: str = typer.Option(..., help="Processed dataset root to write (folder or s3://...)."),
    workers: int = typer.Option(1, help="Scenes processed in parallel (processes)."),
    superpoints: str = typer.Option("graph", help="graph (no weights) | sam | fastsam."),
    sam_checkpoint: Optional[str] = typer.Option(None, help="Checkpoint file for sam / fastsam."),
    num_points: int = typer.Option(20000, help="Points per frame."),
    seed: int = typer.Option(0),
    scene: list[str] = typer.Option([], help="Only these scene ids (repeatable)."),
) -> None:
    """Build a processed SV/MV dataset following ESAM's recipe; reruns skip finished scenes."""
    from oseg3d.data.create_data import CreateDataParams, create_data

    if kind not in KINDS:
        _fail(OsegError(kind, "unknown dataset kind", f"use one of {', '.join(KINDS)}"))
    params = CreateDataParams(kind=kind, num_points=num_points, superpoints=superpoints,
                              sam_checkpoint=sam_checkpoint, seed=seed)
    try:
        rep = create_data(raw, out, params, workers=workers, scenes=list(scene) or None)
    except OsegError as e:
        _fail(e)
    typer.echo(json.dumps({"frames": rep["frames"], "scenes_failed": len(rep["scenes"]["failed"]),
                           "scenes_missing": rep["scenes"]["missing"], "elapsed_s": rep["elapsed_s"]}))
    typer.echo(f"report: {out.rstrip('/')}/report.md")


@app.command("precompute-clip")
def precompute_clip_cmd(
    dataset: str = typer.Argument(..., help="Processed dataset (create-data output), folder or s3://."),
    raw: str = typer.Option("", help="Raw ScanNet root; default: dataset.json's raw_root, else <dataset>/_raw."),
    weights: str = typer.Option("", help="open_clip ViT-B/16 state dict (.safetensors, or weights-only .pt/.bin)."),
    random_init: bool = typer.Option(False, help="No weights: random conv1 (smoke runs; NOT CLIP features)."),
    workers: int = typer.Option(4, help="Image-decoding threads per device."),
    devices: str = typer.Option("", help="Comma-separated, e.g. cuda:0,cuda:1 (default: cuda if present, else cpu)."),
    batch_size: int = typer.Option(16, help="Frames per conv1 call."),
    pack_clip: bool = typer.Option(False, help="Also rewrite the manifests (schema v2) with the feature paths."),
) -> None:
    """CLIP conv1 features of every manifest frame into <dataset>/clip_feat/; reruns skip existing files."""
    from oseg3d.steps import precompute_clip as step

    try:
        rep = step.run(dataset, raw, weights, random_init, workers, devices, batch_size, pack_clip)
    except OsegError as e:
        _fail(e)
    keys = ("frames_total", "computed", "skipped_existing", "missing_images", "unreadable_images", "frames_per_s",
            "clip_source", "packed")
    typer.echo(json.dumps({k: rep[k] for k in keys if k in rep}))
    typer.echo(f"report: {dataset.rstrip('/')}/clip_feat/report.json")


def _local_dataset(uri: str, cache: str) -> str:
    """Training reads local files: an s3:// dataset is downloaded (skipping files already there)."""
    from oseg3d import storage

    if not storage.is_s3(uri):
        return uri
    storage.download_tree(uri, cache, workers=8, skip_existing=True)
    return cache


def _sync_out(local: str, uri: str) -> None:
    from oseg3d import storage

    if storage.is_s3(uri):
        storage.upload_tree(local, uri, workers=8)


def _parse_mapping(items: list[str]) -> dict[str, str]:
    out = {}
    for it in items:
        src, sep, dst = it.partition("=")
        if not sep:
            _fail(OsegError(it, "mapping is not SRC=DST", "write e.g. --map backbone.=bi_encoder.backbone3d."))
        out[src] = dst
    return out


@app.command(context_settings={"allow_extra_args": True})
def train(
    ctx: typer.Context,
    config: str = typer.Argument(..., help="Config name (e.g. ESAM_sv_3d_scannet) or YAML path; key=value overrides follow."),
    data: str = typer.Option(..., help="Processed dataset (create-data output), folder or s3://."),
    work_dir: str = typer.Option(..., help="Run folder (or s3:// prefix, synced at the end)."),
    init: Optional[str] = typer.Option(None, help="Init weights (a transfer's init.safetensors)."),
    resume: bool = typer.Option(True, help="Continue from work-dir's last checkpoint if there is one."),
    no_val: bool = typer.Option(False, help="Skip validation (keeps last weights as best)."),
) -> None:
    """Train a model; a rerun with --resume continues from the last checkpoint."""
    import shutil

    from oseg3d.steps import train as train_step

    local_run = work_dir if not work_dir.startswith("s3://") else os.path.join(tempfile.gettempdir(), "oseg3d-run")
    if not resume and os.path.isdir(os.path.join(local_run, "checkpoints")):
        shutil.rmtree(os.path.join(local_run, "checkpoints"))
    try:
        root = _local_dataset(data, os.path.join(tempfile.gettempdir(), "oseg3d-data"))
        summary = train_step.run(config, root, local_run, overrides=list(ctx.args), init=init, validate=not no_val)
        _sync_out(local_run, work_dir)
    except OsegError as e:
        _fail(e)
    typer.echo(json.dumps(summary))


@app.command()
def transfer(
    source: str = typer.Option(..., help="Source weights (model_best.safetensors or a .ckpt)."),
    target_config: str = typer.Option(..., help="Config of the model to initialise."),
    out: str = typer.Option(..., help="Folder for init.safetensors and transfer_report.md."),
    map: list[str] = typer.Option([], help="Prefix mapping SRC=DST (repeatable); none = same names."),
) -> None:
    """Build a target model's init weights from a source checkpoint by key mapping, with a report."""
    from oseg3d.steps import transfer as transfer_step

    try:
        summary = transfer_step.run(source, target_config, out, _parse_mapping(map) or None)
    except OsegError as e:
        _fail(e)
    typer.echo(json.dumps(summary))


@app.command(context_settings={"allow_extra_args": True})
def evaluate(
    ctx: typer.Context,
    config: str = typer.Argument(..., help="Config name or YAML path; key=value overrides follow."),
    data: str = typer.Option(..., help="Processed dataset (its val split is scored)."),
    checkpoint: str = typer.Option(..., help="Model weights, or 'random-init' for the chance baseline."),
    out: str = typer.Option(..., help="Folder for metrics.json, report.md, plots."),
    max_items: int = typer.Option(0, help="Score only the first N frames / scenes (0 = all)."),
) -> None:
    """Evaluate a model (SV: per frame; MV: online, on the mesh) and write metrics and a report."""
    from oseg3d.steps import evaluate as evaluate_step

    try:
        root = _local_dataset(data, os.path.join(tempfile.gettempdir(), "oseg3d-data"))
        metrics = evaluate_step.run(config, root, checkpoint, out, overrides=list(ctx.args), max_items=max_items)
    except OsegError as e:
        _fail(e)
    typer.echo(json.dumps(metrics))
    typer.echo(f"report: {out.rstrip('/')}/report.md")


@bench_app.command("data")
def bench_data_cmd(
    work: str = typer.Option("runs/bench-data", help="Working folder (the world is reused between runs)."),
    scenes: int = typer.Option(4), frames: int = typer.Option(81),
    workers: int = typer.Option(1, help="Also time this many parallel workers."),
) -> None:
    """create_data throughput: frames/s per core (graph superpoints, no SAM)."""
    from oseg3d.bench.data import bench_data

    bench_data(work, scenes=scenes, frames=frames, workers=workers)


# the options every bench over the shared synthetic world takes
_BenchWork = Annotated[str, typer.Option(help="Working folder (synthetic world and datasets are reused).")]
_Routes = Annotated[str, typer.Option(help="Comma-separated routes: 3d, 3dtsa, bifusion.")]
_Scenes = Annotated[int, typer.Option(help="Synthetic scenes.")]
_Frames = Annotated[int, typer.Option(help="Raw frames per scene.")]
_Workers = Annotated[int, typer.Option(help="Processes for synthesis / create_data / loaders.")]


@bench_app.command("online")
def bench_online_cmd(
    work: _BenchWork = "runs/bench", routes: _Routes = "3d,3dtsa,bifusion", scenes: _Scenes = 3, frames: _Frames = 81,
    workers: _Workers = os.cpu_count() or 1,
    stream_frames: int = typer.Option(40, help="Frames of the val scene streamed per pass."),
) -> None:
    """Online per-frame latency per route: components, p50/p90, backbone alone, naive reference, profile."""
    from oseg3d.bench.online import bench_online

    bench_online(Path(work), os.path.join(work, "bench_online.json"), tuple(routes.split(",")), scenes=scenes,
                 frames=frames, workers=workers, stream_frames=stream_frames)


@bench_app.command("train")
def bench_train_cmd(
    work: _BenchWork = "runs/bench", routes: _Routes = "3d", scenes: _Scenes = 3, frames: _Frames = 81,
    workers: _Workers = os.cpu_count() or 1,
    steps: int = typer.Option(30, help="Timed steps per run (after 5 warm-up steps)."),
    set_: list[str] = typer.Option([], "--set", help="Config override for every run, key=value (repeatable)."),
) -> None:
    """SV and MV training frames/s through the real trainer, data wait share, GPU busy share, peak memory."""
    from oseg3d.bench.train import bench_train

    bench_train(Path(work), os.path.join(work, "bench_train.json"), tuple(routes.split(",")), scenes=scenes,
                frames=frames, workers=workers, steps=steps, overrides=tuple(set_))


@bench_app.command("clip")
def bench_clip_cmd(
    work: _BenchWork = "runs/bench", scenes: _Scenes = 3, frames: _Frames = 81, workers: _Workers = os.cpu_count() or 1,
    batch_size: int = typer.Option(64),
    min_frames: int = typer.Option(2000, help="Frames of the steady-state and per-stage passes (the list repeats)."),
) -> None:
    """precompute_clip frames/s, decode and writes included, and each stage's rate alone."""
    from oseg3d.bench.clip import bench_clip

    bench_clip(Path(work), os.path.join(work, "bench_clip.json"), scenes=scenes, frames=frames, workers=workers,
               batch_size=batch_size, min_frames=min_frames)


@bench_app.command("eval")
def bench_eval_cmd(
    work: str = typer.Option("runs/bench", help="Where the JSON goes."),
    scenes: int = typer.Option(312, help="Val scenes (ScanNet val: 312)."),
    points: int = typer.Option(150_000, help="Mesh points per scene."),
    benchmark: str = typer.Option("scannet200", help="scannet200 (class-agnostic) | scannet."),
) -> None:
    """Seconds to score a val set: collect + instance AP, coverage, semantic IoU."""
    from oseg3d.bench.eval import bench_eval

    bench_eval(os.path.join(work, "bench_eval.json"), scenes=scenes, points=points, benchmark=benchmark)


model_app = typer.Typer(no_args_is_help=True, help="Model inspection.")
app.add_typer(model_app, name="model")


@model_app.command("params")
def model_params(
    benchmark: str = typer.Option("scannet200", help="scannet (18 classes) | scannet200 (class-agnostic)."),
    online: bool = typer.Option(True, help="MV model (memory, box head, merge head)."),
) -> None:
    """Parameter count per component (ESAM: backbone 37.85 M, memory 4.96 M, decoder 3.64 M, ...)."""
    from oseg3d.models.build import ModelConfig, build_model, count_parameters

    cfg = ModelConfig(num_semantic=200 if benchmark == "scannet200" else 20,
                      class_agnostic=benchmark == "scannet200", online=online)
    typer.echo("| component | parameters | M |\n|---|---|---|")
    for k, v in count_parameters(build_model(cfg)).items():
        typer.echo(f"| {k} | {v:,} | {v / 1e6:.2f} |")


if __name__ == "__main__":
    app()
