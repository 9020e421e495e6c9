"""`oseg3d pipeline run --local` runs the whole route ❶ DAG through kfp.local; killed during training and
rerun with --resume, it skips the finished steps, resumes training and ends with the same metrics."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).parents[2]
# toy scale: the real code path on a 2-scene world with 4,000 points per frame
TOY = ["--scenes", "2", "--frames", "21", "--points", "4000"]
TIMING = {"ms_per_frame", "peak_mem_gb"}


def _cmd(runs: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "oseg3d.cli", "pipeline", "run", "--local", "--runs-dir", str(runs), *TOY, *extra]


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _scores(run: Path) -> dict[str, dict]:
    """Every evaluate home's metrics, by config, without the wall-clock columns."""
    out = {}
    for marker in (run / "kfp" / "_work").glob("evaluate-*/_COMPLETE.json"):
        record = json.loads(marker.read_text())
        out[record["params"]["config"]] = {k: v for k, v in record["result"].items() if k not in TIMING}
    return out


def test_pipeline_run_local_kill_during_training_then_resume(tmp_path):
    ref = subprocess.run(_cmd(tmp_path / "ref"), cwd=REPO, env=_env(), capture_output=True, text=True, timeout=1200)
    assert ref.returncode == 0, ref.stderr[-3000:]
    assert "| ❶ MV |" in ref.stdout and "report: " in ref.stdout
    (ref_run,) = (tmp_path / "ref").iterdir()
    html = [Path(line.split("report: ", 1)[1]) for line in ref.stdout.splitlines() if line.startswith("report: ")]
    assert html and all(p.is_file() and p.read_text().startswith("<!doctype html>") for p in html)
    expected = _scores(ref_run)
    assert set(expected) == {"ESAM_sv_3d_scannet200", "ESAM_online_3d_scannet200"}

    runs = tmp_path / "killed"
    proc = subprocess.Popen(_cmd(runs), cwd=REPO, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 900
    while time.time() < deadline and proc.poll() is None:  # kill the whole run once training has a checkpoint
        if list(runs.glob("*/kfp/_work/train-*/checkpoints/last.ckpt")):
            break
        time.sleep(0.5)
    assert proc.poll() is None, "the run ended before training wrote a checkpoint"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    (run,) = runs.iterdir()
    finished = [m.parent.name for m in run.glob("kfp/_work/*/_COMPLETE.json")]
    assert any(f.startswith("create_data-") for f in finished)
    assert not any(f.startswith("train-") for f in finished)

    resumed = subprocess.run(_cmd(runs, "--resume", run.name), cwd=REPO, env=_env(), capture_output=True, text=True,
                             timeout=1200)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    log = resumed.stdout + resumed.stderr
    for home in finished:  # every step that had finished before the kill is skipped, not rerun
        assert f"skipped, already complete in {run / 'kfp' / '_work' / home}" in log, home
    assert "train: resuming from" in log
    assert _scores(run) == expected


def _markers(run: Path, step: str) -> dict[str, dict]:
    """Complete records of one step kind, by home fingerprint."""
    return {json.loads(m.read_text())["fingerprint"]: json.loads(m.read_text())
            for m in (run / "kfp" / "_work").glob(f"{step}-*/_COMPLETE.json")}


def test_pipeline_run_local_routes_hand_weights_down_the_chain(tmp_path):
    """❶ → ❷ → ❸ at toy scale: six evaluations, CLIP features precomputed, each route initialised from the
    previous one's best weights (❷ SV ← ❶ SV, ❸ SV ← ❷ MV) with nothing shape-mismatched."""
    proc = subprocess.run(_cmd(tmp_path, "--pipeline", "routes"), cwd=REPO, env=_env(), capture_output=True,
                          text=True, timeout=1500)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for row in ("❶ SV", "❶ MV", "❷ SV", "❷ MV", "❸ SV", "❸ MV"):
        assert f"| {row} |" in proc.stdout, row
    (run,) = tmp_path.iterdir()
    scores = _scores(run)
    assert set(scores) == {f"ESAM_{m}_{r}_scannet200" for m in ("sv", "online") for r in ("3d", "3dtsa", "bifusion")}
    for config, result in scores.items():
        assert 0.0 <= result["miou"] <= 1.0, config
        assert result["mrec"] is None or 0.0 <= result["mrec"] <= 1.0, config

    trains = {rec["params"]["config"]: fp for fp, rec in _markers(run, "train").items()}
    handoffs = {rec["params"]["target_config"]: rec for rec in _markers(run, "transfer").values()}
    for target, source in (("ESAM_sv_3dtsa_scannet200", "ESAM_sv_3d_scannet200"),
                           ("ESAM_sv_bifusion_scannet200", "ESAM_online_3dtsa_scannet200")):
        rec = handoffs[target]
        assert rec["inputs"]["source"] == trains[source], target
        assert rec["result"]["loaded"] > 0 and rec["result"]["shape_mismatch"] == 0, rec["result"]
    # both datasets carry the CLIP conv1 features route ❸ trains on
    assert len(list((run / "kfp" / "_work").glob("create_data-*/_COMPLETE.precompute_clip.json"))) == 2
