"""precompute_clip step and `oseg3d precompute-clip`: raw-root resolution, the CLI, a real kill, s3 datasets."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
from typer.testing import CliRunner

from oseg3d import storage
from oseg3d.cli import app
from oseg3d.clip.features import read_feature
from oseg3d.clip.precompute import list_frames
from oseg3d.data import processed
from oseg3d.errors import ConfigError
from oseg3d.steps import precompute_clip as step

runner = CliRunner()


def _copy(datasets, kind, dst):
    shutil.copytree(datasets[kind][0], dst, ignore=shutil.ignore_patterns("mesh", "clip_feat"))
    return dst


def test_raw_root_resolution(datasets, raw_world, tmp_path):
    root = _copy(datasets, "scannet_sv", tmp_path / "sv")
    assert step.resolve_raw_root(str(root), "s3://b/raw") == "s3://b/raw"
    assert step.resolve_raw_root(str(root)) == str(raw_world[0])  # create_data's dataset.json raw_root
    meta = json.loads((root / "dataset.json").read_text())
    (root / "dataset.json").write_text(json.dumps(dict(meta, raw_root=str(tmp_path / "moved"))))
    with pytest.raises(ConfigError, match="--raw"):
        step.resolve_raw_root(str(root))
    (root / "_raw").mkdir()  # steps.create_data's synthetic world
    assert step.resolve_raw_root(str(root)) == str(root / "_raw")


def test_cli_computes_packs_and_reruns(datasets, tmp_path):
    root = _copy(datasets, "scannet_mv", tmp_path / "mv")
    args = ["precompute-clip", str(root), "--random-init", "--batch-size", "4", "--workers", "2", "--devices", "cpu"]
    r = runner.invoke(app, args + ["--pack-clip"])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout.splitlines()[0])
    n = len(list_frames(str(root)))
    assert summary["computed"] == summary["frames_total"] == n and summary["skipped_existing"] == 0
    assert summary["clip_source"].startswith("random-init") and summary["frames_per_s"] > 0
    assert set(summary["packed"]) == {"manifest_train.parquet", "manifest_val.parquet"}
    table = processed.read_manifest(str(root / "manifest_val.parquet"))
    assert processed.manifest_version(table) == 2
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout.splitlines()[0])["skipped_existing"] == n


def test_cli_without_weights_is_a_clear_error(datasets, tmp_path):
    root = _copy(datasets, "scannet_sv", tmp_path / "sv")
    r = runner.invoke(app, ["precompute-clip", str(root)])
    assert r.exit_code == 2
    assert "--weights" in r.output and "Fix:" in r.output
    assert not (root / "clip_feat").exists()


def test_a_killed_run_leaves_only_complete_files_and_a_rerun_finishes(datasets, tmp_path):
    root = _copy(datasets, "scannet_mv", tmp_path / "mv")
    n = len(list_frames(str(root)))
    cmd = [sys.executable, "-m", "oseg3d.cli", "precompute-clip", str(root), "--random-init", "--batch-size", "1",
           "--workers", "1", "--devices", "cpu"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        while not list((root / "clip_feat").rglob("*.safetensors")) and proc.poll() is None and time.time() < deadline:
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    done = list((root / "clip_feat").rglob("*.safetensors"))
    assert 0 < len(done) < n, "the kill should land mid-run"
    for f in done:  # every final name is a complete file
        assert read_feature(str(f))["pix"].shape == (192, 60, 80)
    rep = step.run(str(root), random_init=True, devices="cpu", progress=False)
    assert rep["skipped_existing"] == len(done) and rep["computed"] == n - len(done)
    assert len(list((root / "clip_feat").rglob("*.safetensors"))) == n


def test_dataset_on_s3(datasets, raw_world, s3_bucket, tmp_path):
    local = _copy(datasets, "scannet_sv", tmp_path / "sv")
    shutil.rmtree(local / "frames")  # not needed here; keeps the upload small
    uri = f"{s3_bucket}/sv"
    storage.upload_tree(str(local), uri, progress=False)
    rep = step.run(uri, raw=str(raw_world[0]), random_init=True, devices="cpu", pack=True, progress=False)
    n = len(list_frames(str(local)))
    assert rep["computed"] == n
    feats = [o for o in storage.list_files(f"{uri}/clip_feat") if o.rel.endswith(".safetensors")]
    assert len(feats) == n and read_feature(feats[0].uri)["global"].shape == (768,)
    table = processed.read_manifest(f"{uri}/manifest_train.parquet")
    assert processed.manifest_version(table) == 2
    assert step.run(uri, raw=str(raw_world[0]), random_init=True, devices="cpu", progress=False)["computed"] == 0
