"""The `oseg3d` command end to end on a tiny world: synth → create-data, and its error messages."""
from __future__ import annotations

import json

from typer.testing import CliRunner

from oseg3d.cli import app

runner = CliRunner()


def test_synth_then_create_data(tmp_path):
    raw, out = tmp_path / "raw", tmp_path / "sv"
    r = runner.invoke(app, ["synth", str(raw), "--scenes", "2", "--frames", "11", "--mesh-resolution", "0.1"])
    assert r.exit_code == 0, r.output
    assert "wrote 2 scenes" in r.output
    r = runner.invoke(app, ["create-data", "scannet_sv", "--raw", str(raw), "--out", str(out)])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout.splitlines()[0])  # progress bars go to stderr
    assert summary["frames"]["kept"] == 2 * 2  # raw frames 0..200 per scene: 0 and 200 are SV frames
    assert (out / "report.md").is_file() and (out / "manifest_train.parquet").is_file()


def test_unknown_kind_is_a_clear_error(tmp_path):
    r = runner.invoke(app, ["create-data", "scannet_xx", "--raw", str(tmp_path), "--out", str(tmp_path / "o")])
    assert r.exit_code == 2
    assert "unknown dataset kind" in r.output and "scannet_sv" in r.output


def test_missing_raw_root_is_a_clear_error(tmp_path):
    r = runner.invoke(app, ["create-data", "scannet_mv", "--raw", str(tmp_path / "nope"), "--out", str(tmp_path / "o")])
    assert r.exit_code == 2
    assert "split list is missing" in r.output and "Fix:" in r.output
