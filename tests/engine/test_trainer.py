"""Training runs on create_data output: outputs, resume after a stop, DDP with two gloo processes."""
from __future__ import annotations

import csv
import os
import subprocess
import sys
import textwrap

from safetensors.torch import load_file

import torch

from oseg3d.configs import load_config
from oseg3d.engine.trainer import fit
from oseg3d.steps.train import make_validator


def _cfg(root, steps, extra=()):
    return load_config("ESAM_sv_3d_scannet200", [f"data.root={root}", "data.batch_size=1", "data.num_workers=0",
                                                 f"train.max_steps={steps}", "train.log_every=1",
                                                 "schedule.warmup_iters=2", *extra])


def _steps(run):
    with open(run / "metrics.csv", newline="") as f:
        return [int(r["step"]) for r in csv.DictReader(f)]


def test_fit_writes_outputs_and_resumes(datasets, tmp_path):
    root = str(datasets["scannet200_sv"][0])
    run = tmp_path / "run"
    summary = fit(_cfg(root, 2), str(run))
    assert summary["global_step"] == 2
    for name in ("config.yaml", "metrics.csv", "model_best.safetensors", "model_last.safetensors",
                 "summary.json", "checkpoints/last.ckpt"):
        assert (run / name).is_file(), name
    header = (run / "metrics.csv").read_text().splitlines()[0]
    for col in ("train/loss", "train/loss_dice", "train/lr", "train/iter_time_s", "train/data_time_s"):
        assert col in header
    first = load_file(str(run / "model_last.safetensors"))
    # a second run in the same folder continues from the last checkpoint instead of starting over
    summary = fit(_cfg(root, 4), str(run))
    assert summary["global_step"] == 4
    assert _steps(run) == [0, 1, 2, 3]
    second = load_file(str(run / "model_last.safetensors"))
    assert any(not (first[k] == second[k]).all() for k in first if first[k].is_floating_point())


def test_checkpoints_one_full_last_and_weights_only_top_k(datasets, tmp_path, monkeypatch):
    monkeypatch.delenv("NCCL_NVLS_ENABLE", raising=False)
    root = str(datasets["scannet200_sv"][0])
    cfg = _cfg(root, 3, ["train.ckpt_every_steps=1", "train.keep_checkpoints=1", "data.val_max_items=2"])
    fit(cfg, str(tmp_path), make_validator(cfg))
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert "last.ckpt" in names and len(names) == 2, names  # no last-v1.ckpt from the second last-saver
    assert os.environ["NCCL_NVLS_ENABLE"] == "0"  # DDP workers started from here inherit multicast off
    last = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
    assert "optimizer_states" in last  # resume needs it
    (best,) = [n for n in names if n != "last.ckpt"]
    assert "optimizer_states" not in torch.load(tmp_path / "checkpoints" / best, weights_only=True, map_location="cpu")


def test_ddp_two_gloo_processes(datasets, tmp_path):
    script = tmp_path / "ddp.py"
    script.write_text(textwrap.dedent(f"""
        from oseg3d.configs import load_config
        from oseg3d.engine.trainer import fit
        cfg = load_config("ESAM_sv_3d_scannet200", ["data.root={datasets['scannet200_sv'][0]}", "data.batch_size=1",
            "data.num_workers=0", "train.max_steps=2", "train.log_every=1", "train.devices=2", "train.accelerator=cpu"])
        fit(cfg, "{tmp_path / 'run'}")
    """))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", str(script)]
    proc = subprocess.run(torchrun, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "run" / "model_best.safetensors").is_file()
    assert _steps(tmp_path / "run") == [0, 1]
