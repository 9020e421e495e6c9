"""Local backend: writes are atomic (a failing write leaves neither a final file nor a temp file)."""
from __future__ import annotations

import io
import os

import pytest

from oseg3d import storage
from oseg3d.errors import StorageError
from oseg3d.storage import local


class _FailingStream(io.RawIOBase):
    """Yields ``ok`` bytes, then raises: a source that dies mid-copy."""

    def __init__(self, ok: int):
        self.left = ok

    def readable(self):
        return True

    def read(self, size=-1):
        if self.left <= 0:
            raise RuntimeError("source died")
        n = min(self.left, 1 << 16 if size is None or size < 0 else size)
        self.left -= n
        return b"x" * n


def test_failed_write_leaves_nothing(tmp_path):
    target = tmp_path / "out" / "big.bin"
    with pytest.raises(RuntimeError, match="source died"):
        storage.put_stream(_FailingStream(3 << 20), target)
    assert not target.exists()
    assert os.listdir(target.parent) == []  # no temp file left behind


def test_failed_overwrite_keeps_old_content(tmp_path):
    target = tmp_path / "state.json"
    storage.write_json(target, {"step": 1})
    with pytest.raises(RuntimeError):
        with local.atomic_writer(str(target)) as f:
            f.write(b'{"step": 2, "trunc')
            raise RuntimeError("crash mid-write")
    assert storage.read_json(target) == {"step": 1}
    assert os.listdir(tmp_path) == ["state.json"]


def test_stream_length_and_checksum_checked(tmp_path):
    target = tmp_path / "s.bin"
    with pytest.raises(StorageError, match="expected 10"):
        storage.put_stream(io.BytesIO(b"12345"), target, length=10)
    with pytest.raises(StorageError, match="sha256"):
        storage.put_stream(io.BytesIO(b"12345"), target, sha256="0" * 64)
    assert os.listdir(tmp_path) == []
    storage.put_stream(io.BytesIO(b"12345"), target, length=5, sha256=storage.sha256_bytes(b"12345"))
    assert target.read_bytes() == b"12345"


def test_temp_files_not_listed(tmp_path):
    storage.write_text(tmp_path / "a.txt", "a")
    (tmp_path / ".b.txt.tmp-123-0123abcd").write_text("left by a killed writer")
    assert [i.rel for i in storage.list_files(tmp_path)] == ["a.txt"]
    info = storage.stat(tmp_path / "a.txt")
    st = os.stat(tmp_path / "a.txt")
    assert info.etag == f"{st.st_size}-{st.st_mtime_ns}" and info.sha256 is None


def test_delete_prefix_refuses_root():
    with pytest.raises(StorageError, match="root"):
        storage.delete_prefix("/")
