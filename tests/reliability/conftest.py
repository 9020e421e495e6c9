"""Fixtures of the reliability tests: small processed datasets (4,000 points per frame) of the shared
synthetic world, and the kill driver."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

DRIVER = Path(__file__).with_name("_kill_driver.py")
NUM_POINTS = 4000


def drive(job: str, args: dict, root, kill: str = "", env: dict | None = None,
          timeout: float = 300) -> subprocess.CompletedProcess:
    """Run `job` in a fresh interpreter through the kill driver (see _kill_driver.py); `root` is the output
    location whose events count, `kill` the ``event:n:phase`` to die at ("" = run to the end)."""
    env = {**os.environ, **(env or {}), "OSEG3D_TEST_KILL": kill, "OSEG3D_TEST_KILL_ROOT": str(root),
           "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(DRIVER), job, json.dumps(args)], env=env, capture_output=True,
                          text=True, timeout=timeout)


def event_counts(proc: subprocess.CompletedProcess) -> dict[str, int]:
    """The event counts an uninterrupted driver run printed last."""
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])["events"]


@pytest.fixture(scope="session")
def small_datasets(raw_world, tmp_path_factory):
    """create_data of the shared world at 4,000 points per frame: {kind: root} for scannet_sv and scannet_mv."""
    from oseg3d.data.create_data import CreateDataParams, create_data

    out = tmp_path_factory.mktemp("small_datasets")
    for kind in ("scannet_sv", "scannet_mv"):
        create_data(str(raw_world[0]), str(out / kind), CreateDataParams(kind=kind, num_points=NUM_POINTS))
    return {kind: out / kind for kind in ("scannet_sv", "scannet_mv")}
