"""Storage faults: the S3 endpoint drops connections or goes away mid-upload and mid-download, and the local
disk fills up. Transient faults are ridden out by bounded retries with backoff; lasting ones end in a
StorageError that names the URI and the fix; nothing partial is left under a final name; a later run
completes.

The S3 server is the session's moto server behind `FlakyProxy` (tests/reliability/_netfaults.py), which
resets connections after a byte budget or stops listening like a dead server. Already covered elsewhere:
an endpoint that never answers (tests/storage/test_s3_checks.py::test_unreachable_endpoint_bounded_retries),
a truncated or bit-flipped stored object caught by its sha256
(tests/storage/test_s3_checks.py::test_checksum_catches_corrupt_object), a SIGKILLed multipart upload
(tests/storage/test_interrupted_upload.py).
"""
from __future__ import annotations

import errno
import io
import math
import os
import re
import subprocess
import sys
import time

import pytest

from oseg3d import storage
from oseg3d.errors import StorageError
from oseg3d.storage import local, retry, s3

from ._netfaults import FlakyProxy

KiB, MiB = 1 << 10, 1 << 20


@pytest.fixture
def proxy(s3_server, monkeypatch):
    """The S3 endpoint seen through a FlakyProxy (the environment points at the proxy for this test)."""
    p = FlakyProxy(s3_server)
    monkeypatch.setenv("OSEG3D_S3_ENDPOINT", p.endpoint)
    s3.clear_client_cache()
    yield p
    p.close()
    s3.clear_client_cache()


def _retry_delays(caplog) -> list[float]:
    """The backoff delays retry.with_retries logged ("...; retry 2/4 in 0.31s")."""
    found = (re.search(r"retry \d+/\d+ in ([\d.]+)s", r.getMessage()) for r in caplog.records)
    return [float(m.group(1)) for m in found if m]


def _source(tmp_path, size: int):
    path = tmp_path / "src.bin"
    path.write_bytes(os.urandom(size))
    return path


def test_upload_rides_out_dropped_connections(proxy, s3_bucket, tmp_path, caplog):
    src = _source(tmp_path, 2 * MiB)
    uri = storage.join(s3_bucket, "up/scene.bin")
    proxy.cut("up", after=256 * KiB, times=2)  # the first two tries are reset a quarter MiB into the body
    storage.put_file(src, uri)
    assert proxy.cuts == 2 and len(_retry_delays(caplog)) == 2
    assert storage.stat(uri).sha256 == storage.sha256_file(src)
    assert storage.read_bytes(uri) == src.read_bytes()


def test_upload_that_keeps_dropping_fails_after_bounded_backoff_then_a_later_run_completes(
        proxy, s3_bucket, tmp_path, caplog):
    src = _source(tmp_path, 1 * MiB)
    uri = storage.join(s3_bucket, "up/scene.bin")
    proxy.cut("up", after=64 * KiB, times=math.inf)
    t0 = time.monotonic()
    with pytest.raises(StorageError) as ei:
        storage.put_file(src, uri)
    elapsed = time.monotonic() - t0
    msg = str(ei.value)
    assert msg.startswith(f"{uri}: PUT failed {retry.DEFAULT_ATTEMPTS} times") and f"Fix: check OSEG3D_S3_ENDPOINT " \
        f"({proxy.endpoint})" in msg
    delays = _retry_delays(caplog)  # jittered exponential backoff: each in [d/2, d], d = 0.2 s doubling
    assert len(delays) == retry.DEFAULT_ATTEMPTS - 1 == proxy.cuts - 1
    for i, d in enumerate(delays):
        full = min(retry.DEFAULT_MAX_DELAY, retry.DEFAULT_BASE_DELAY * 2 ** i)
        assert full / 2 <= d <= full + 1e-9, delays
    assert sum(delays) <= elapsed < 30
    proxy.heal()
    assert not storage.exists(uri)  # nothing half-written became visible
    storage.put_file(src, uri)  # the next run goes through
    assert storage.read_bytes(uri) == src.read_bytes()


def test_download_rides_out_dropped_connections(proxy, s3_bucket, tmp_path):
    data = os.urandom(2 * MiB)
    uri = storage.join(s3_bucket, "down/scene.bin")
    storage.write_bytes(uri, data)
    proxy.cut("down", after=512 * KiB, times=2)  # body cut short twice: urllib3 sees a broken connection
    dst = tmp_path / "dl" / "scene.bin"
    storage.get_file(uri, dst)
    assert proxy.cuts == 2 and dst.read_bytes() == data
    assert os.listdir(dst.parent) == ["scene.bin"]  # the cut attempts' temp files are gone


def test_endpoint_dying_mid_download_is_a_clear_error_and_a_later_run_completes(proxy, s3_bucket, tmp_path):
    data = os.urandom(3 * MiB)
    uri = storage.join(s3_bucket, "down/scene.bin")
    storage.write_bytes(uri, data)
    dst = tmp_path / "dl" / "scene.bin"
    proxy.cut("down", after=1 * MiB, outage=math.inf)  # one MiB into the body, the server goes away for good
    with pytest.raises(StorageError) as ei:
        storage.get_file(uri, dst)
    msg = str(ei.value)
    assert msg.startswith(f"{uri}: GET failed {retry.DEFAULT_ATTEMPTS} times") and proxy.endpoint in msg
    assert "Fix:" in msg
    assert not dst.exists() and os.listdir(dst.parent) == []  # no partial file, no temp file
    proxy.up()  # the server is back: the rerun completes
    storage.get_file(uri, dst)
    assert dst.read_bytes() == data


def test_endpoint_restarting_mid_multipart_upload_is_ridden_out(proxy, s3_bucket, tmp_path, caplog):
    src = _source(tmp_path, 12 * MiB)
    uri = storage.join(s3_bucket, "up/big.bin")
    # 3 MiB into a part (minio sends the 5 MiB parts over parallel connections) the server dies; it is back
    # 0.5 s later, within the retry budget (5 tries over >= 1.5 s of backoff)
    proxy.cut("up", after=3 * MiB, outage=0.5)
    storage.put_file(src, uri, part_size=5 * MiB)
    assert proxy.cuts == 1 and _retry_delays(caplog)  # it did fail, and was retried
    assert storage.read_bytes(uri) == src.read_bytes()
    assert [o.rel for o in storage.list_files(storage.join(s3_bucket, "up"))] == ["big.bin"]


# ------------------------------------------------------------------------------------------------------
# full disk: ENOSPC from the storage layer's writes (simulated), and a real file-size limit (RLIMIT_FSIZE)
# ------------------------------------------------------------------------------------------------------

class _FullDiskFile(io.FileIO):
    """A file on a disk with `room` bytes left: write() fails with ENOSPC beyond them."""

    room = 64 * KiB

    def write(self, data) -> int:
        if self.tell() + len(data) > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return super().write(data)


def _full_disk_open(path, mode="r", *args, **kwargs):
    if "x" in mode or "w" in mode:
        return io.BufferedWriter(_FullDiskFile(path, mode.replace("b", "")))
    return open(path, mode, *args, **kwargs)


def _no_space_fsync(fd):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("where", ["write", "fsync"])
def test_full_disk_names_the_file_says_free_space_and_keeps_the_old_content(tmp_path, monkeypatch, where):
    target = tmp_path / "out" / "state.bin"
    storage.write_bytes(target, b"old, complete")
    if where == "write":  # the write itself fails
        monkeypatch.setattr(local, "open", _full_disk_open, raising=False)
    else:  # delayed allocation: the data only fails to fit when flushed to disk
        monkeypatch.setattr(local.os, "fsync", _no_space_fsync)
    with pytest.raises(StorageError) as ei:
        storage.write_bytes(target, os.urandom(1 * MiB))
    msg = str(ei.value)
    assert msg.startswith(f"{target}: write: No space left on device")
    assert f"Fix: free disk space on the volume holding {target.parent}" in msg
    monkeypatch.undo()
    assert target.read_bytes() == b"old, complete"
    assert os.listdir(target.parent) == ["state.bin"]  # no temp file left either


def test_full_disk_during_a_download_names_the_local_file_and_is_not_retried(s3_bucket, tmp_path, monkeypatch,
                                                                              caplog):
    uri = storage.join(s3_bucket, "down/scene.bin")
    storage.write_bytes(uri, os.urandom(256 * KiB))
    dst = tmp_path / "dl" / "scene.bin"
    monkeypatch.setattr(local, "open", _full_disk_open, raising=False)
    with pytest.raises(StorageError, match=r"No space left on device.*Fix: free disk space") as ei:
        storage.get_file(uri, dst)
    assert str(ei.value).startswith(str(dst))  # the full disk is the local one, not the object store
    assert _retry_delays(caplog) == []  # waiting does not free space: no retries
    assert os.listdir(dst.parent) == []


def _limit_file_size():
    import resource

    resource.setrlimit(resource.RLIMIT_FSIZE, (512 * KiB, 512 * KiB))  # Python ignores SIGXFSZ: writes get EFBIG


def test_create_data_on_a_full_disk_stops_with_the_fix_and_a_rerun_completes(raw_world, small_datasets, tmp_path):
    from oseg3d.data.create_data import CreateDataParams, create_data

    out = tmp_path / "mv"
    cmd = [sys.executable, "-m", "oseg3d.cli", "create-data", "scannet_mv", "--raw", str(raw_world[0]), "--out",
           str(out), "--num-points", "4000"]
    proc = subprocess.run(cmd, capture_output=True, text=True, preexec_fn=_limit_file_size, timeout=300,
                          env={**os.environ, "TMPDIR": str(tmp_path)})
    assert proc.returncode == 2, proc.stderr[-3000:]
    err = proc.stderr.strip().splitlines()[-1]
    assert err.startswith("error: ") and "File too large" in err and "Fix: free disk space" in err, err
    assert "Traceback" not in proc.stderr
    finals = [os.path.join(d, f) for d, _, fs in os.walk(out) for f in fs if not local.is_temp_name(f)]
    assert finals == []  # nothing (partial or not) under a final name
    create_data(str(raw_world[0]), str(out), CreateDataParams(kind="scannet_mv", num_points=4000))
    ref = small_datasets["scannet_mv"]
    for rel in ("frames/scene0000_00.safetensors", "mesh/scene0001_00.safetensors", "manifest_train.parquet"):
        assert (out / rel).read_bytes() == (ref / rel).read_bytes(), rel
