"""SIGKILL a training run mid-epoch, rerun with --resume: it continues from the last checkpoint and ends
with the same number of optimizer steps and the same weights as an uninterrupted run."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import torch


def _cmd(root, run):
    return [sys.executable, "-m", "oseg3d.cli", "train", "ESAM_sv_3d_scannet200", "data.batch_size=1",
            "data.num_workers=0", "schedule.epochs=2", "train.ckpt_every_steps=2", "train.log_every=1",
            "--data", str(root), "--work-dir", str(run), "--no-val"]


def _ckpt_step(path) -> int:
    return int(torch.load(path, map_location="cpu", weights_only=True)["global_step"])


def test_sigkill_mid_epoch_then_resume_replays_the_uninterrupted_run(datasets, tmp_path):
    root = datasets["scannet200_sv"][0]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ref = subprocess.run(_cmd(root, tmp_path / "ref"), env=env, capture_output=True, text=True, timeout=900)
    assert ref.returncode == 0, ref.stderr[-2000:]
    expected = json.loads((tmp_path / "ref" / "summary.json").read_text())["global_step"]

    run = tmp_path / "killed"
    last = run / "checkpoints" / "last.ckpt"
    proc = subprocess.Popen(_cmd(root, run), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:  # wait for a mid-epoch checkpoint, then kill
        if last.is_file():
            try:
                if _ckpt_step(last) >= 2:
                    break
            except Exception:  # noqa: BLE001 - the checkpoint may be mid-write
                pass
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = _ckpt_step(last)
    assert 0 < killed_at < expected
    assert not (run / "summary.json").exists()

    resumed = subprocess.run(_cmd(root, run), env=env, capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert json.loads((run / "summary.json").read_text())["global_step"] == expected
    steps = [int(line.split(",")[1]) for line in (run / "metrics.csv").read_text().splitlines()[1:]]
    assert steps[0] == 0 and steps[-1] == expected - 1
    # same seed → same order, augmentations and query subsets after the resume → the same final weights
    from safetensors.torch import load_file

    a, b = load_file(tmp_path / "ref" / "model_last.safetensors"), load_file(run / "model_last.safetensors")
    assert a.keys() == b.keys()
    worst = max(float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].is_floating_point())
    assert worst < 1e-5, f"resumed weights differ from the uninterrupted run by up to {worst}"
