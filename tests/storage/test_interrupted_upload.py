"""An upload that dies half-way must leave no object behind, whether it raises or is SIGKILLed."""
from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import textwrap
import time

from oseg3d import storage

MiB = 1 << 20


class _DiesAfter:
    """A non-seekable stream that serves ``data`` but raises after ``ok`` bytes."""

    def __init__(self, data: bytes, ok: int):
        self.buf, self.ok = io.BytesIO(data), ok

    def read(self, size=-1):
        if self.buf.tell() >= self.ok:
            raise RuntimeError("producer crashed")
        return self.buf.read(min(size, self.ok - self.buf.tell()) if size and size > 0 else self.ok)


def _pending_uploads(raw, uri: str) -> list[str]:
    bucket, key = storage.split_s3(uri)
    return [u.object_name for u in raw._list_multipart_uploads(bucket).uploads if u.object_name == key]


def test_stream_raising_mid_multipart_leaves_no_object(s3_bucket, s3_raw_client):
    uri = storage.join(s3_bucket, "ckpt/partial.bin")
    data = os.urandom(12 * MiB)
    try:
        # Part 1 (5 MiB) is uploaded, then the stream dies while part 2 is read.
        storage.put_stream(_DiesAfter(data, 7 * MiB), uri, length=len(data), sha256=storage.sha256_bytes(data),
                           part_size=5 * MiB)
        raise AssertionError("put_stream should have raised")
    except RuntimeError as exc:
        assert "producer crashed" in str(exc)
    assert not storage.exists(uri)
    assert storage.list_files(storage.join(s3_bucket, "ckpt")) == []
    assert _pending_uploads(s3_raw_client, uri) == []  # minio aborted the multipart upload


# Uploads argv[1] to argv[2] in 5 MiB parts, slowed to ~10 MiB/s through the progress hook,
# printing the bytes read so far so the test knows when the upload is half-way.
_SLOW_UPLOADER = textwrap.dedent("""
    import sys, time
    from oseg3d import storage
    sent = 0
    def slow(n):
        global sent
        sent += n
        print(sent, flush=True)
        time.sleep(0.1)
    storage.put_file(sys.argv[1], sys.argv[2], part_size=5 * 2**20, progress=slow)
    print("done", flush=True)
""")


def test_killed_upload_leaves_no_object_and_retry_succeeds(s3_bucket, s3_raw_client, tmp_path):
    src = tmp_path / "scene.bin"
    src.write_bytes(os.urandom(24 * MiB))
    uri = storage.join(s3_bucket, "scenes/scene.bin")
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_UPLOADER, str(src), uri], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=dict(os.environ))
    try:
        deadline = time.monotonic() + 20
        for line in proc.stdout:
            # Past 11 MiB read, part 1 is on the server and part 2 is being read: kill mid-upload.
            if line.strip() == "done" or int(line) >= 11 * MiB or time.monotonic() > deadline:
                break
        assert line.strip() != "done", "upload finished before it could be interrupted"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read()
    assert _pending_uploads(s3_raw_client, uri)  # it really died inside a multipart upload...
    assert not storage.exists(uri)  # ...and nothing is visible under the key
    assert storage.list_files(storage.join(s3_bucket, "scenes")) == []

    storage.put_file(src, uri, part_size=5 * MiB)
    out = tmp_path / "back.bin"
    storage.get_file(uri, out)
    assert out.read_bytes() == src.read_bytes()
    assert storage.stat(uri).sha256 == storage.sha256_file(src)
