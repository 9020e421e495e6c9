"""Round trips, listing, exists/stat and delete through the facade, identical for local paths and S3."""
from __future__ import annotations

import os

import pytest

from oseg3d import storage
from oseg3d.errors import StorageError


@pytest.fixture(params=["local", "s3"])
def root(request, tmp_path):
    """A writable base location: a temp directory or a fresh S3 bucket."""
    if request.param == "local":
        return str(tmp_path / "store")
    return request.getfixturevalue("s3_bucket")


def test_bytes_text_json_roundtrip(root):
    b, t, j = storage.join(root, "a/b.bin"), storage.join(root, "t.txt"), storage.join(root, "d/c.json")
    storage.write_bytes(b, b"\x00\x01binary\xff")
    storage.write_text(t, "héllo\n")
    storage.write_json(j, {"z": 1, "a": [1, 2.5, None]})
    assert storage.read_bytes(b) == b"\x00\x01binary\xff"
    assert storage.read_text(t) == "héllo\n"
    assert storage.read_json(j) == {"a": [1, 2.5, None], "z": 1}
    # sorted keys, indent 2: stable bytes for hashing and diffs
    assert storage.read_text(j) == '{\n  "a": [\n    1,\n    2.5,\n    null\n  ],\n  "z": 1\n}\n'
    storage.write_bytes(b, b"")  # overwrite with empty content
    assert storage.read_bytes(b) == b""


def test_put_get_file_roundtrip(root, tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(300_000))
    dst_uri = storage.join(root, "files/src.bin")
    storage.put_file(src, dst_uri)
    out = tmp_path / "out" / "copy.bin"
    seen = []
    storage.get_file(dst_uri, out, progress=seen.append)
    assert out.read_bytes() == src.read_bytes()
    assert sum(seen) == 300_000
    assert storage.sha256_of(dst_uri) == storage.sha256_file(src)
    # move=True: the source is gone afterwards, the destination complete
    storage.put_file(src, storage.join(root, "moved.bin"), move=True)
    assert not src.exists()
    assert storage.read_bytes(storage.join(root, "moved.bin")) == out.read_bytes()


def test_exists_stat_delete(root):
    u = storage.join(root, "x/obj.bin")
    assert not storage.exists(u)
    storage.write_bytes(u, b"12345")
    assert storage.exists(u)
    info = storage.stat(u)
    assert (info.uri, info.rel, info.size) == (u, "obj.bin", 5) and info.etag
    if storage.is_s3(root):
        assert info.sha256 == storage.sha256_bytes(b"12345")
    storage.delete(u)
    assert not storage.exists(u)
    storage.delete(u)  # missing is fine by default
    with pytest.raises(StorageError, match="does not exist|no such file"):
        storage.delete(u, missing_ok=False)
    with pytest.raises(StorageError, match="obj.bin"):
        storage.stat(u)


def test_listing_prefixes_and_recursion(root):
    for rel in ["data/a.txt", "data/sub/b.txt", "data/sub/deeper/c.txt", "database/x.txt", "top.txt"]:
        storage.write_text(storage.join(root, rel), rel)
    infos = storage.list_files(storage.join(root, "data"))
    assert [i.rel for i in infos] == ["a.txt", "sub/b.txt", "sub/deeper/c.txt"]  # not database/
    assert [i.uri for i in infos] == [storage.join(root, "data", i.rel) for i in infos]
    assert all(i.size == len("data/" + i.rel) for i in infos)
    assert [i.rel for i in storage.list_files(storage.join(root, "data"), recursive=False)] == ["a.txt"]
    assert [i.rel for i in storage.list_files(storage.join(root, "data/sub"))] == ["b.txt", "deeper/c.txt"]
    assert storage.list_files(storage.join(root, "nothing-here")) == []
    assert storage.delete_prefix(storage.join(root, "data/sub")) == 2
    assert [i.rel for i in storage.list_files(root)] == ["data/a.txt", "database/x.txt", "top.txt"]


def test_missing_file_names_uri(root, tmp_path):
    u = storage.join(root, "no/such/key.bin")
    with pytest.raises(StorageError) as ei:
        storage.read_bytes(u)
    assert str(ei.value).startswith(u + ":") and "Fix:" in str(ei.value)
    with pytest.raises(StorageError, match="key.bin"):
        storage.get_file(u, tmp_path / "never.bin")
    assert not (tmp_path / "never.bin").exists()


def test_file_uri_is_local(tmp_path):
    storage.write_text(f"file://{tmp_path}/f.txt", "via file uri")
    assert (tmp_path / "f.txt").read_text() == "via file uri"
