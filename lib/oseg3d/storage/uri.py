"""Parse, normalise and join storage locations: local paths, ``file://`` URIs and ``s3://bucket/key``.

Every storage function accepts any of these forms; this module is the one place that decides what a
location means, so the backends only ever see a plain local path or a normalised ``s3://`` URI.
"""
from __future__ import annotations

import os
import posixpath
import re
from urllib.parse import unquote

from oseg3d.errors import StorageError

__all__ = ["is_s3", "split_s3", "make_s3", "to_local_path", "normalise", "join", "basename", "dirname"]

S3_SCHEME = "s3://"
FILE_SCHEME = "file://"
# S3/MinIO bucket naming rules; checked here so a typo fails with a message, not a ValueError deep in minio.
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


def is_s3(uri: str | os.PathLike) -> bool:
    """Return True if ``uri`` names an S3 object or prefix (``s3://...``).

    Args:
        uri: a local path, ``file://`` URI or ``s3://`` URI.

    Returns:
        Whether the location is remote (S3).
    """
    return isinstance(uri, str) and uri.startswith(S3_SCHEME)


def _clean_key(key: str, uri: str) -> str:
    """Collapse ``//`` and ``.`` segments of an S3 key; refuse ``..`` (S3 has no parent directories)."""
    parts = []
    for part in key.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            raise StorageError(uri, "'..' is not allowed in an S3 key", "write the key without '..'")
        parts.append(part)
    return "/".join(parts)


def split_s3(uri: str) -> tuple[str, str]:
    """Split ``s3://bucket/some/key`` into ``("bucket", "some/key")``.

    Args:
        uri: an ``s3://`` URI; the key may be empty (bucket root).

    Returns:
        ``(bucket, key)`` with the key normalised (no leading, trailing or doubled slashes).

    Raises:
        StorageError: the URI is not ``s3://`` or names no bucket.
    """
    if not is_s3(uri):
        raise StorageError(str(uri), "not an s3:// URI", "write it as s3://bucket/key")
    bucket, _, key = uri[len(S3_SCHEME):].partition("/")
    if not bucket:
        raise StorageError(uri, "the S3 URI names no bucket", "write it as s3://bucket/key")
    if not _BUCKET_RE.match(bucket) or ".." in bucket:
        raise StorageError(uri, f"invalid bucket name {bucket!r}",
                           "use 3-63 lowercase letters, digits, '.' or '-', starting and ending alphanumeric")
    return bucket, _clean_key(key, uri)


def make_s3(bucket: str, key: str = "") -> str:
    """Build ``s3://bucket/key`` (``s3://bucket`` for an empty key).

    Args:
        bucket: bucket name.
        key: object key or prefix.

    Returns:
        The normalised URI.
    """
    key = _clean_key(key, f"{S3_SCHEME}{bucket}/{key}")
    return f"{S3_SCHEME}{bucket}/{key}" if key else f"{S3_SCHEME}{bucket}"


def to_local_path(uri: str | os.PathLike) -> str:
    """Turn a local path or ``file://`` URI into a normalised filesystem path.

    Args:
        uri: a path (str or PathLike) or ``file:///abs/path`` / ``file://localhost/abs/path``.

    Returns:
        The path, with ``.``/``..``/doubled separators collapsed (relative paths stay relative).

    Raises:
        StorageError: ``uri`` is an ``s3://`` URI or a ``file://`` URI for another host.
    """
    text = os.fspath(uri)
    if is_s3(text):
        raise StorageError(text, "expected a local path, got an s3:// URI", "pass a local path")
    if text.startswith(FILE_SCHEME):
        host, slash, path = text[len(FILE_SCHEME):].partition("/")
        if host not in ("", "localhost"):
            raise StorageError(text, f"file:// URI for remote host {host!r}", "use file:///absolute/path")
        text = unquote(slash + path)
    if not text:
        raise StorageError(str(uri), "empty path", "pass a file or directory path")
    return os.path.normpath(text)


def normalise(uri: str | os.PathLike) -> str:
    """Return the canonical form of a location: ``s3://bucket/key`` or a plain local path.

    Args:
        uri: any accepted location form.

    Returns:
        The canonical string; ``file://`` URIs come back as plain paths.
    """
    if is_s3(uri):
        return make_s3(*split_s3(str(uri)))
    return to_local_path(uri)


def join(uri: str | os.PathLike, *parts: str) -> str:
    """Append path components to a location, with ``/`` for S3 and ``os.path.join`` locally.

    Args:
        uri: the base location (any accepted form).
        *parts: components to append; may themselves contain ``/``.

    Returns:
        The joined, normalised location (a plain path for local bases).
    """
    if is_s3(uri):
        bucket, key = split_s3(str(uri))
        return make_s3(bucket, "/".join([key, *parts]))
    # Strip leading separators so that a part never silently resets the join to the filesystem root.
    return os.path.normpath(os.path.join(to_local_path(uri), *(p.lstrip("/\\") for p in parts)))


def basename(uri: str | os.PathLike) -> str:
    """Return the last component of a location (``""`` for a bucket root).

    Args:
        uri: any accepted location form.

    Returns:
        The file or object name.
    """
    if is_s3(uri):
        return posixpath.basename(split_s3(str(uri))[1])
    return os.path.basename(to_local_path(uri))


def dirname(uri: str | os.PathLike) -> str:
    """Return the parent location (``s3://bucket`` for a top-level key).

    Args:
        uri: any accepted location form.

    Returns:
        The parent, in the same form as :func:`normalise` returns.
    """
    if is_s3(uri):
        bucket, key = split_s3(str(uri))
        return make_s3(bucket, posixpath.dirname(key))
    return os.path.dirname(to_local_path(uri))
