"""S3-specific guarantees: checksum verification, clear errors for missing objects and configuration, retries."""
from __future__ import annotations

import io
import os
import socket
import time

import pytest

from oseg3d import storage
from oseg3d.errors import StorageError
from oseg3d.storage import retry, s3


def _corrupt(raw, uri: str, content: bytes, sha256: str | None) -> None:
    """Overwrite an object behind the API's back, with the given (possibly stale) sha256 metadata."""
    bucket, key = storage.split_s3(uri)
    raw.put_object(bucket, key, io.BytesIO(content), len(content), metadata={"sha256": sha256} if sha256 else None)


@pytest.mark.parametrize("bad", ["truncated", "flipped"])
def test_checksum_catches_corrupt_object(s3_bucket, s3_raw_client, tmp_path, bad):
    uri = storage.join(s3_bucket, "ckpt/model.bin")
    good = os.urandom(100_000)
    storage.write_bytes(uri, good)
    content = good[:60_000] if bad == "truncated" else good[:500] + bytes([good[500] ^ 1]) + good[501:]
    _corrupt(s3_raw_client, uri, content, storage.sha256_bytes(good))  # stale metadata, as after bit rot
    with pytest.raises(StorageError, match="truncated or corrupt") as ei:
        storage.read_bytes(uri)
    assert str(ei.value).startswith(uri)
    dst = tmp_path / "dl" / "model.bin"
    with pytest.raises(StorageError, match="truncated or corrupt"):
        storage.get_file(uri, dst)
    assert not dst.exists()
    assert os.listdir(dst.parent) == []  # the temp download was removed too


def test_object_without_checksum_metadata_still_readable(s3_bucket, s3_raw_client):
    uri = storage.join(s3_bucket, "foreign.txt")
    _corrupt(s3_raw_client, uri, b"written by another tool", None)
    assert storage.stat(uri).sha256 is None
    assert storage.read_bytes(uri) == b"written by another tool"
    assert storage.sha256_of(uri) == storage.sha256_bytes(b"written by another tool")


def test_missing_key_fails_at_once_with_clear_message(s3_bucket):
    uri = storage.join(s3_bucket, "missing/thing.json")
    client, calls = s3.get_client(uri), []
    bucket, key = storage.split_s3(uri)

    def head():
        calls.append(1)
        return client.stat_object(bucket, key)

    with pytest.raises(StorageError, match="object does not exist") as ei:
        retry.with_retries(head, what="HEAD", uri=uri)
    assert len(calls) == 1  # permanent errors are not retried
    assert str(ei.value).startswith(f"{uri}: ")
    with pytest.raises(StorageError, match="bucket does not exist"):
        storage.read_bytes("s3://no-such-bucket-oseg3d/x")


def test_missing_endpoint_and_credentials_are_named(s3_server, monkeypatch):
    monkeypatch.delenv("OSEG3D_S3_ENDPOINT")
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    with pytest.raises(StorageError, match="OSEG3D_S3_ENDPOINT") as ei:
        storage.read_bytes("s3://bucket/k")
    assert str(ei.value).startswith("s3://bucket/k:")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server)  # the fallback variable works
    assert s3.config_from_env().endpoint == s3_server.split("://")[1]
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(StorageError, match="AWS_SECRET_ACCESS_KEY") as ei:
        storage.exists("s3://bucket/k")
    assert "AWS_ACCESS_KEY_ID" in str(ei.value)


def test_endpoint_scheme_parsing(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "supersecret")
    monkeypatch.delenv("OSEG3D_S3_SECURE", raising=False)
    for raw, endpoint, secure in [("http://h:9000", "h:9000", False), ("https://h:9000/", "h:9000", True),
                                  ("h:9000", "h:9000", True)]:
        monkeypatch.setenv("OSEG3D_S3_ENDPOINT", raw)
        cfg = s3.config_from_env()
        assert (cfg.endpoint, cfg.secure) == (endpoint, secure)
        assert "supersecret" not in repr(cfg)  # configs may be logged
    monkeypatch.setenv("OSEG3D_S3_SECURE", "0")
    assert s3.config_from_env().secure is False


def _dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_endpoint_bounded_retries(monkeypatch):
    endpoint = f"http://127.0.0.1:{_dead_port()}"
    monkeypatch.setenv("OSEG3D_S3_ENDPOINT", endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    client, calls = s3.get_client(), []

    def head():
        calls.append(1)
        return client.stat_object("bucket", "k")

    t0 = time.monotonic()
    with pytest.raises(StorageError) as ei:
        retry.with_retries(head, what="HEAD", uri="s3://bucket/k", attempts=3, base_delay=0.01)
    assert len(calls) == 3 and time.monotonic() - t0 < 5
    msg = str(ei.value)
    assert msg.startswith("s3://bucket/k: HEAD failed 3 times") and "OSEG3D_S3_ENDPOINT" in msg
    # Through the facade (default policy: 5 attempts, ~3 s of backoff) the message names the endpoint.
    with pytest.raises(StorageError, match=f"failed 5 times.*{endpoint}"):
        storage.read_bytes("s3://bucket/k")
