"""Shared pytest fixtures. Each section belongs to one package; append new sections, keep them separate."""
from __future__ import annotations

import uuid

import pytest

# =====================================================================================================
# oseg3d.storage: a real S3-compatible server (moto server mode) on 127.0.0.1 with dummy credentials.
# =====================================================================================================

S3_TEST_ACCESS_KEY = "testing"  # moto accepts any credentials; these are dummies, never real ones
S3_TEST_SECRET_KEY = "testing"


@pytest.fixture(scope="session")
def s3_server():
    """Start moto's S3 server on a free local port, point the S3 env vars at it; yields the endpoint URL."""
    from moto.server import ThreadedMotoServer

    from oseg3d.storage import s3

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("OSEG3D_S3_ENDPOINT", endpoint)
            mp.setenv("AWS_ACCESS_KEY_ID", S3_TEST_ACCESS_KEY)
            mp.setenv("AWS_SECRET_ACCESS_KEY", S3_TEST_SECRET_KEY)
            mp.setenv("AWS_REGION", "us-east-1")
            mp.delenv("AWS_SESSION_TOKEN", raising=False)
            mp.delenv("AWS_ENDPOINT_URL", raising=False)
            mp.delenv("OSEG3D_S3_SECURE", raising=False)
            yield endpoint
    finally:
        s3.clear_client_cache()
        server.stop()


@pytest.fixture
def s3_raw_client(s3_server):
    """A plain minio client on the test server, for setting up (or corrupting) objects behind the API's back."""
    from minio import Minio

    return Minio(s3_server.split("://", 1)[1], access_key=S3_TEST_ACCESS_KEY, secret_key=S3_TEST_SECRET_KEY,
                 secure=False, region="us-east-1")


@pytest.fixture
def s3_bucket(s3_server, s3_raw_client):
    """A fresh, empty bucket for one test; yields ``s3://<bucket>`` and empties/removes it afterwards."""
    from minio.deleteobjects import DeleteObject

    name = f"test-{uuid.uuid4().hex[:16]}"
    s3_raw_client.make_bucket(name)
    yield f"s3://{name}"
    # Free the server's memory (some tests upload tens of MiB); failures here must not mask the test's.
    try:
        keys = [DeleteObject(o.object_name) for o in s3_raw_client.list_objects(name, recursive=True)]
        list(s3_raw_client.remove_objects(name, keys))
        s3_raw_client.remove_bucket(name)
    except Exception:  # noqa: BLE001
        pass


# =====================================================================================================
# oseg3d.data: one small synthetic world with real-scan defects, and its four processed datasets.
# =====================================================================================================

DATA_WORLD_DEFECTS = {"nan_pose": 1, "corrupt_png": 1, "missing_frame": 1, "zero_depth": 1, "unknown_label": 1,
                      "missing_scene": 1}


@pytest.fixture(scope="session")
def raw_world(tmp_path_factory):
    """A 3-scene world (21 frames each: SV frames 0/200/400, MV every 40th) with injected defects."""
    from oseg3d.scannet.synth import SynthSpec, write_world

    root = tmp_path_factory.mktemp("raw_world")
    desc = write_world(root, SynthSpec(scenes=3, frames=21, mesh_resolution=0.08, seed=3,
                                       defects=DATA_WORLD_DEFECTS), workers=2)
    return root, desc


@pytest.fixture(scope="session")
def datasets(raw_world, tmp_path_factory):
    """The four create_data outputs of `raw_world`: {kind: (out_dir, report)}."""
    from oseg3d.data.create_data import CreateDataParams, create_data

    root, _ = raw_world
    out = tmp_path_factory.mktemp("datasets")
    return {kind: (out / kind, create_data(str(root), str(out / kind), CreateDataParams(kind=kind), workers=1))
            for kind in ("scannet_sv", "scannet_mv", "scannet200_sv", "scannet200_mv")}
