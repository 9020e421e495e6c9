"""oseg3d.storage.uri: parsing, normalising and joining local paths, file:// and s3:// URIs."""
from __future__ import annotations

import pytest

from oseg3d.errors import StorageError
from oseg3d.storage import uri


def test_s3_split_join_basename():
    assert uri.is_s3("s3://bucket/k") and not uri.is_s3("/tmp/x") and not uri.is_s3("file:///tmp/x")
    assert uri.split_s3("s3://bucket//a/./b/") == ("bucket", "a/b")
    assert uri.split_s3("s3://bucket") == ("bucket", "")
    assert uri.join("s3://bucket", "a", "b/c.txt") == "s3://bucket/a/b/c.txt"
    assert uri.join("s3://bucket/x/", "/y") == "s3://bucket/x/y"
    assert uri.basename("s3://bucket/a/b.bin") == "b.bin"
    assert uri.dirname("s3://bucket/a/b.bin") == "s3://bucket/a"
    assert uri.dirname("s3://bucket/b.bin") == "s3://bucket"
    assert uri.normalise("s3://bucket/a//b") == "s3://bucket/a/b"


def test_local_and_file_uris(tmp_path):
    assert uri.to_local_path(f"file://{tmp_path}/a/../b.txt") == f"{tmp_path}/b.txt"
    assert uri.to_local_path(f"file://localhost{tmp_path}") == str(tmp_path)
    assert uri.normalise(tmp_path / "x" / ".." / "y") == f"{tmp_path}/y"
    assert uri.join(str(tmp_path), "a", "/b/c") == f"{tmp_path}/a/b/c"
    assert uri.join(f"file://{tmp_path}", "d") == f"{tmp_path}/d"
    assert uri.basename(f"{tmp_path}/q.json") == "q.json"


@pytest.mark.parametrize("bad", ["s3://", "s3:///key", "s3://bucket/a/../c", "s3://B_ad/key", "s3://ab/key"])
def test_bad_s3_uris(bad):
    with pytest.raises(StorageError, match="Fix:"):
        uri.split_s3(bad)


def test_remote_file_uri_refused():
    with pytest.raises(StorageError, match="remote host"):
        uri.to_local_path("file://otherhost/data")
