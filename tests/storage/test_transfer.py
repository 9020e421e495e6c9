"""Parallel tree transfers: local -> S3 -> local and local -> local, byte-identical, with skip_existing."""
from __future__ import annotations

import os
import random

import pytest

from oseg3d import storage

MiB = 1 << 20


@pytest.fixture
def tree(tmp_path):
    """30 files in nested directories: one empty, 28 small, one 12 MiB (multipart with 8 MiB parts)."""
    rng = random.Random(0)
    root = tmp_path / "src"
    files = {"empty.txt": b"", "big/model.bin": os.urandom(12 * MiB)}
    for i in range(28):
        files[f"scene{i % 4:02d}/frames/{i:04d}.bin"] = rng.randbytes(rng.randint(1, 50_000))
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root, files


def _read_tree(root) -> dict[str, bytes]:
    return {i.rel: open(i.uri, "rb").read() for i in storage.list_files(root)}


def test_upload_download_tree_s3(tree, s3_bucket, tmp_path):
    src, files = tree
    dst = storage.join(s3_bucket, "datasets/v1")
    total = sum(map(len, files.values()))
    res = storage.upload_tree(src, dst, workers=8, desc="upload", progress=False)
    assert (res.files, res.bytes, res.skipped) == (30, total, 0)
    listed = storage.list_files(dst)
    assert sorted(files) == [i.rel for i in listed]
    assert storage.stat(storage.join(dst, "big/model.bin")).sha256 == storage.sha256_bytes(files["big/model.bin"])

    res = storage.download_tree(dst, tmp_path / "back", workers=8, desc="download")
    assert (res.files, res.bytes) == (30, total)
    assert _read_tree(tmp_path / "back") == files

    # Re-running is cheap: everything is already there with the same sha256.
    again = storage.upload_tree(src, dst, skip_existing=True, progress=False)
    assert (again.files, again.skipped) == (0, 30)
    (src / "empty.txt").write_bytes(b"changed")
    again = storage.download_tree(dst, tmp_path / "back", skip_existing=True, progress=False)
    assert (again.files, again.skipped) == (0, 30)
    again = storage.upload_tree(src, dst, skip_existing=True, progress=False)
    assert (again.files, again.skipped) == (1, 29)


def test_copy_tree_local_to_local(tree, tmp_path):
    src, files = tree
    res = storage.copy_tree(src, tmp_path / "copy", workers=4, progress=False)
    assert res.files == 30
    assert _read_tree(tmp_path / "copy") == files


def test_empty_source_is_an_error(tmp_path, s3_bucket):
    with pytest.raises(storage.StorageError, match="no files to copy"):
        storage.download_tree(storage.join(s3_bucket, "nothing"), tmp_path / "x")
    assert storage.copy_tree(storage.join(s3_bucket, "nothing"), tmp_path / "x", allow_empty=True).files == 0
