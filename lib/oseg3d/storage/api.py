"""The storage operations, dispatched on the URI to ``local.py`` or ``s3_backend.py``.

Re-exported by ``oseg3d.storage``; import from there. Kept separate from the package ``__init__`` so
that ``transfer.py`` can build on these functions without a circular import.
"""
from __future__ import annotations

import json
import os
from typing import Any, BinaryIO

from oseg3d.errors import StorageError

from . import local, s3_backend
from .checksum import Progress, sha256_file
from .object_info import ObjectInfo
from .uri import is_s3, normalise

__all__ = [
    "exists", "stat", "list_files", "read_bytes", "write_bytes", "read_text", "write_text",
    "read_json", "write_json", "put_stream", "get_file", "put_file", "delete", "delete_prefix",
    "sha256_of",
]


def _backend(uri: str | os.PathLike):
    """Return (backend module, normalised location) for ``uri``."""
    loc = normalise(uri)
    return (s3_backend if is_s3(loc) else local), loc


def exists(uri: str | os.PathLike) -> bool:
    """Return whether something exists at ``uri``.

    Args:
        uri: local path, ``file://`` or ``s3://`` URI.

    Returns:
        True if the file (locally: file or directory) or object exists; for ``s3://bucket``, the bucket.
    """
    backend, loc = _backend(uri)
    return backend.exists(loc)


def stat(uri: str | os.PathLike) -> ObjectInfo:
    """Describe one file or object.

    Args:
        uri: the file or object.

    Returns:
        Its :class:`ObjectInfo` (``rel`` is the base name; ``sha256`` set for objects written by us).

    Raises:
        StorageError: it does not exist, or is not a file.
    """
    backend, loc = _backend(uri)
    return backend.stat(loc)


def list_files(prefix_uri: str | os.PathLike, recursive: bool = True) -> list[ObjectInfo]:
    """List the files under a directory / S3 prefix.

    Args:
        prefix_uri: the directory; for S3 it is treated as ``<key>/`` (``s3://b/data`` does not match
            ``s3://b/database``).
        recursive: also list files in subdirectories.

    Returns:
        The files sorted by ``rel`` (path relative to ``prefix_uri``, ``/``-separated); empty if none.
        Local temp files of in-progress atomic writes are not listed.
    """
    backend, loc = _backend(prefix_uri)
    return backend.list_files(loc, recursive)


def read_bytes(uri: str | os.PathLike) -> bytes:
    """Read a whole file or object (S3: size and sha256 verified).

    Args:
        uri: the file or object.

    Returns:
        Its content.
    """
    backend, loc = _backend(uri)
    return backend.read_bytes(loc)


def write_bytes(uri: str | os.PathLike, data: bytes) -> None:
    """Atomically write a whole file or object (S3: with sha256 metadata).

    Args:
        uri: the destination; local parent directories are created.
        data: the content.
    """
    backend, loc = _backend(uri)
    backend.write_bytes(loc, bytes(data))


def read_text(uri: str | os.PathLike, encoding: str = "utf-8") -> str:
    """Read a text file or object.

    Args:
        uri: the file or object.
        encoding: text encoding.

    Returns:
        The decoded text.

    Raises:
        StorageError: unreadable, or not text in ``encoding``.
    """
    try:
        return read_bytes(uri).decode(encoding)
    except UnicodeDecodeError as exc:  # binary garbage where text belongs: name the file, not the codec
        raise StorageError(str(uri), f"not {encoding} text ({exc.reason} at byte {exc.start})",
                           "replace the file with the text file it should be") from exc


def write_text(uri: str | os.PathLike, text: str, encoding: str = "utf-8") -> None:
    """Atomically write a text file or object.

    Args:
        uri: the destination.
        text: the content.
        encoding: text encoding.
    """
    write_bytes(uri, text.encode(encoding))


def read_json(uri: str | os.PathLike) -> Any:
    """Read and parse a JSON file or object.

    Args:
        uri: the file or object.

    Returns:
        The parsed value.

    Raises:
        StorageError: unreadable, or not valid JSON.
    """
    text = read_text(uri)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise StorageError(str(uri), f"not valid JSON ({exc})",
                           "rerun the step that wrote it (or restore the file from a copy)") from exc


def write_json(uri: str | os.PathLike, obj: Any) -> None:
    """Atomically write ``obj`` as JSON (sorted keys, indent 2, trailing newline: stable diffs and hashes).

    Args:
        uri: the destination.
        obj: a JSON-serialisable value.
    """
    write_text(uri, json.dumps(obj, sort_keys=True, indent=2) + "\n")


def put_stream(stream: BinaryIO, uri: str | os.PathLike, *, length: int = -1, sha256: str | None = None,
               part_size: int | None = None, progress: Progress | None = None) -> None:
    """Atomically write the content of a binary stream.

    Args:
        stream: a binary file object, read from its current position to its end.
        uri: the destination.
        length: number of bytes, if known (-1: read to the end).
        sha256: hex sha256 of the content, if known; S3 needs it before uploading, so without it the
            stream is hashed first (seekable streams) or spooled to a temp file.
        part_size: S3 multipart part size in bytes (>= 5 MiB; default 8 MiB).
        progress: called with byte counts as data is transferred.

    Raises:
        StorageError: the stream disagrees with ``length``/``sha256``, or the upload failed.
    """
    backend, loc = _backend(uri)
    if backend is local:
        local.put_stream(stream, loc, length=length, sha256=sha256, progress=progress)
    else:
        s3_backend.put_stream(stream, loc, length=length, sha256=sha256, part_size=part_size, progress=progress)


def get_file(uri: str | os.PathLike, local_path: str | os.PathLike, progress: Progress | None = None) -> None:
    """Download (or copy) a file/object to a local path, atomically and verified.

    Args:
        uri: the source file or object.
        local_path: the destination path; nothing appears there unless the copy is complete and verified.
        progress: called with byte counts as data is transferred.
    """
    dst = normalise(local_path)
    if is_s3(dst):
        raise StorageError(dst, "get_file needs a local destination", "use copy_files to copy between buckets")
    backend, loc = _backend(uri)
    backend.get_file(loc, dst, progress)


def put_file(local_path: str | os.PathLike, uri: str | os.PathLike, *, move: bool = False,
             part_size: int | None = None, progress: Progress | None = None) -> None:
    """Upload (or copy) a local file to ``uri`` atomically.

    Args:
        local_path: the source file.
        uri: the destination; local destinations get a temp file in their directory, then ``os.replace``.
        move: remove the source afterwards (locally on one filesystem: a plain rename, no copy).
        part_size: S3 multipart part size in bytes (>= 5 MiB; default 8 MiB).
        progress: called with byte counts as data is transferred.
    """
    src = normalise(local_path)
    if is_s3(src):
        raise StorageError(src, "put_file needs a local source", "use get_file to download, or copy_files")
    backend, loc = _backend(uri)
    if backend is local:
        local.put_file(src, loc, move=move, progress=progress)
    else:
        s3_backend.put_file(src, loc, move=move, part_size=part_size, progress=progress)


def delete(uri: str | os.PathLike, missing_ok: bool = True) -> None:
    """Delete one file or object.

    Args:
        uri: the file or object.
        missing_ok: if False, a missing target is a StorageError.
    """
    backend, loc = _backend(uri)
    backend.delete(loc, missing_ok)


def delete_prefix(uri: str | os.PathLike) -> int:
    """Delete a directory / every object under an S3 prefix (``<key>/``).

    Args:
        uri: the directory or prefix; a bucket root or ``/`` is refused.

    Returns:
        The number of files or objects deleted.
    """
    backend, loc = _backend(uri)
    return backend.delete_prefix(loc)


def sha256_of(uri: str | os.PathLike) -> str:
    """Return the sha256 of a file or object's content.

    Args:
        uri: the file or object.

    Returns:
        The hex digest: from S3 metadata when present (no download), else computed.
    """
    backend, loc = _backend(uri)
    if backend is local:
        with local.os_errors(loc, "read"):
            return sha256_file(loc)
    return s3_backend.sha256_of(loc)
