"""The CPU image builds from a debootstrapped Debian base and runs a real component through kfp.local's DockerRunner.

Needs a Docker daemon (started here, as root, when none answers; stopped again afterwards) and debootstrap
for the base: `.ci/run` installs docker.io and debootstrap. Without them the test skips and says what is
missing. Images are reused across runs while their inputs are unchanged (images/build.py labels them), so
only the first run pays for debootstrap and the build.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import time
import tomllib
from pathlib import Path

import pytest

pytestmark = [pytest.mark.docker, pytest.mark.timeout(1800)]  # cold: debootstrap + wheelhouse + build, ~5 min

REPO = Path(__file__).resolve().parents[2]
VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
IMAGE = f"oseg3d:{VERSION}-cpu"
UID = 1000  # images/Dockerfile's non-root user


def _connect():
    """A docker SDK client, or None while no daemon answers."""
    import docker

    try:
        client = docker.from_env()  # asks the daemon for its API version
        client.ping()
        return client
    except docker.errors.DockerException:
        return None


@pytest.fixture(scope="module")
def docker_client(tmp_path_factory):
    """A docker SDK client; starts dockerd (data under /var/lib/docker) when no daemon answers."""
    pytest.importorskip("docker")
    client, daemon = _connect(), None
    if client is None:
        if os.environ.get("DOCKER_HOST"):
            pytest.skip(f"the Docker daemon at DOCKER_HOST={os.environ['DOCKER_HOST']} does not answer")
        if shutil.which("dockerd") is None:
            pytest.skip("no Docker daemon and dockerd is not installed (apt-get install docker.io)")
        if os.geteuid() != 0:
            pytest.skip("no Docker daemon answers, and starting dockerd needs root")
        log_path = tmp_path_factory.mktemp("dockerd") / "dockerd.log"
        with open(log_path, "wb") as log:
            daemon = subprocess.Popen(["dockerd"], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 60
        while (client := _connect()) is None:
            if daemon.poll() is not None or time.monotonic() > deadline:
                daemon.kill()
                pytest.fail(f"dockerd did not start:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.5)
    yield client
    client.close()
    if daemon is not None:
        daemon.terminate()
        try:
            daemon.wait(60)
        except subprocess.TimeoutExpired:
            daemon.kill()


@pytest.fixture(scope="module")
def cpu_image(docker_client):
    """`oseg3d:<version>-cpu` built by images/build.py (reused when up to date)."""
    names = {t for img in docker_client.images.list() for t in img.tags}
    if "oseg3d-base:bookworm" not in names and shutil.which("debootstrap") is None:
        pytest.skip("debootstrap is not installed (apt-get install debootstrap): it makes the Debian base image")
    subprocess.run([sys.executable, "images/build.py", "--base", "debian", "--variant", "cpu"], cwd=REPO,
                   check=True)
    return IMAGE


def test_image_runs_as_non_root_with_the_runtime(docker_client, cpu_image):
    out = docker_client.containers.run(cpu_image, ["sh", "-c", 'id -u; echo "$HOME"; python -c "import oseg3d, '
                                       'kfp, spconv.pytorch, torch; print(torch.__version__)"'], remove=True)
    uid, home, torch_version = out.decode().split()
    assert (int(uid), home) == (UID, "/home/oseg3d")
    assert torch_version.endswith("+cpu")  # the CPU wheel, not a CUDA build pulled in by a dependency


def test_create_data_component_runs_in_the_image(cpu_image, tmp_path):
    """One real component, run the way `kfp.local.DockerRunner` runs it: our image, outputs on a bind mount."""
    root = tmp_path / "pipeline_root"
    root.mkdir()
    root.chmod(0o777)  # the container writes here as UID 1000
    script = textwrap.dedent("""
        import sys
        from kfp import local
        local.init(runner=local.DockerRunner(), pipeline_root=sys.argv[1])
        from components.data import create_data  # reads OSEG3D_IMAGE at import
        args = dict(kind="scannet_sv", raw_uri="", synth_scenes=1, synth_frames=5, num_points=2000, workspace="")
        task = create_data(**{k: v for k, v in args.items() if k in create_data.component_spec.inputs})
        print("DATASET", task.outputs["dataset"].path)
    """)
    env = {**os.environ, "OSEG3D_IMAGE": cpu_image}
    run = subprocess.run([sys.executable, "-c", script, str(root)], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-5000:] + run.stderr[-5000:]
    assert f"Found image '{cpu_image}'" in run.stdout  # the local image, no pull
    dataset = Path(run.stdout.split("DATASET ")[-1].split()[0])
    import pyarrow.parquet as pq

    train, val = (pq.read_table(dataset / f"manifest_{s}.parquet") for s in ("train", "val"))
    assert train.num_rows >= 1 and val.schema.equals(train.schema)  # 1 synthetic scene: train only
    assert (dataset / "manifest_train.parquet").stat().st_uid == UID  # written by the image's non-root user
