"""S3 backend: the same operations as ``local.py``, on ``s3://bucket/key`` URIs, via minio.

* Every remote call goes through ``retry.with_retries``; each attempt redoes the whole operation
  (rewinds the stream, recreates the download temp file), so a retry never resumes half-way.
* Writes are atomic: a single PUT, or a multipart upload that becomes visible only when completed;
  minio aborts the multipart upload when the stream or a part fails, and a killed process never
  completes it, so no partial object ever appears under the key.
* Writes store the content's sha256 as user metadata; reads check the received size and that sha256
  and raise ``StorageError("... truncated or corrupt ...")`` on mismatch (not retried: a corrupt stored
  object stays corrupt).
"""
from __future__ import annotations

import io
import math
import os
import tempfile
from typing import BinaryIO, Callable, TypeVar

from minio.deleteobjects import DeleteObject
from minio.error import S3Error

from oseg3d.errors import StorageError

from . import local, retry, s3
from .checksum import CHUNK_SIZE, SHA256_HEADER, SHA256_META, HashingReader, Progress, sha256_bytes, sha256_stream
from .object_info import ObjectInfo
from .uri import make_s3, split_s3

__all__ = ["DEFAULT_PART_SIZE", "exists", "stat", "list_files", "read_bytes", "write_bytes", "put_stream",
           "get_file", "sha256_of", "put_file", "delete", "delete_prefix"]

T = TypeVar("T")
MiB = 1 << 20
# minio holds one part in memory per upload; 8 MiB x 8 transfer workers stays well under 100 MiB.
DEFAULT_PART_SIZE = 8 * MiB
MAX_PARTS = 10_000  # S3 limit
# Non-seekable streams without a known sha256 are spooled (memory first, then disk) to hash them first.
SPOOL_MEMORY = 64 * MiB


def _call(uri: str, what: str, fn: Callable[[], T], attempts: int = retry.DEFAULT_ATTEMPTS) -> T:
    """Run one remote operation under the retry policy, with a fix message naming the endpoint."""
    cfg = s3.config_from_env(uri)
    fix = f"check OSEG3D_S3_ENDPOINT ({cfg.url}) and that the server is up and reachable"
    return retry.with_retries(fn, what=what, uri=uri, fix=fix, attempts=attempts)


def _object(uri: str):
    """Return (client, bucket, key) for an object URI; a bucket root is not an object."""
    bucket, key = split_s3(uri)
    if not key:
        raise StorageError(uri, "the URI names a bucket, not an object", "append the object key: s3://bucket/key")
    return s3.get_client(uri), bucket, key


def _sha_from(headers) -> str | None:
    # Listing metadata comes back with server-specific capitalisation; compare case-insensitively.
    if not headers:
        return None
    for k, v in headers.items():
        if k.lower() in (SHA256_HEADER, SHA256_META):
            return v
    return None


def _check(uri: str, headers, received: int, digest: str) -> None:
    """Raise if the received body disagrees with the object's size or stored sha256."""
    expected = headers.get("content-length")
    if expected is not None and int(expected) != received:
        raise StorageError(uri, f"received {received} of {expected} bytes: truncated or corrupt transfer",
                           "retry; if it persists, check the storage server and network")
    stored = _sha_from(headers)
    if stored and stored != digest:
        raise StorageError(uri, f"sha256 {digest[:12]}... does not match the stored {stored[:12]}...: "
                                "object truncated or corrupt", "re-upload the object from its source")


def exists(uri: str) -> bool:
    """Return True if the object exists (for a bucket root: if the bucket exists)."""
    bucket, key = split_s3(uri)
    client = s3.get_client(uri)
    if not key:
        return _call(uri, "HEAD bucket", lambda: client.bucket_exists(bucket))

    def attempt() -> bool:
        try:
            client.stat_object(bucket, key)
            return True
        except S3Error as exc:
            if exc.code in ("NoSuchKey", "NotFound", "NoSuchBucket"):
                return False
            raise
    return _call(uri, "HEAD", attempt)


def stat(uri: str) -> ObjectInfo:
    """Describe the object (size, ETag, sha256 metadata); StorageError if it does not exist."""
    client, bucket, key = _object(uri)
    obj = _call(uri, "HEAD", lambda: client.stat_object(bucket, key))
    return ObjectInfo(uri=uri, rel=key.rsplit("/", 1)[-1], size=obj.size or 0, etag=obj.etag or "",
                      sha256=_sha_from(obj.metadata))


def list_files(prefix_uri: str, recursive: bool = True) -> list[ObjectInfo]:
    """List the objects under ``prefix_uri`` treated as a directory (``<key>/``), sorted by ``rel``."""
    bucket, key = split_s3(prefix_uri)
    client = s3.get_client(prefix_uri)
    prefix = f"{key}/" if key else ""

    def attempt() -> list[ObjectInfo]:
        # include_user_meta: MinIO returns user metadata in listings (saves a HEAD per object); others ignore it.
        objs = client.list_objects(bucket, prefix=prefix, recursive=recursive, include_user_meta=True)
        return [ObjectInfo(uri=make_s3(bucket, o.object_name), rel=o.object_name[len(prefix):], size=o.size or 0,
                           etag=o.etag or "", sha256=_sha_from(o.metadata))
                for o in objs if not o.is_dir]
    return sorted(_call(prefix_uri, "LIST", attempt), key=lambda i: i.rel)


def _drain(uri: str, resp, sink: Callable[[bytes], None], progress: Progress | None) -> str:
    """Copy a GET response into ``sink`` chunk by chunk, verify it, close it; returns the content's sha256."""
    reader = HashingReader(resp, progress)
    try:
        # decode_content=False: hash the stored bytes even if the object has a Content-Encoding.
        resp.decode_content = False
        while chunk := reader.read(CHUNK_SIZE):
            sink(chunk)
        _check(uri, resp.headers, reader.count, reader.hexdigest())
        return reader.hexdigest()
    except BaseException:
        reader.take_back_progress()
        raise
    finally:
        resp.close()
        resp.release_conn()


def read_bytes(uri: str) -> bytes:
    """Download the object into memory, verified."""
    client, bucket, key = _object(uri)

    def attempt() -> bytes:
        parts: list[bytes] = []
        _drain(uri, client.get_object(bucket, key), parts.append, None)
        return b"".join(parts)
    return _call(uri, "GET", attempt)


def get_file(uri: str, local_path: str, progress: Progress | None = None) -> None:
    """Download the object to ``local_path`` through a temp file that is renamed only once verified."""
    client, bucket, key = _object(uri)

    def attempt() -> None:
        resp = client.get_object(bucket, key)  # before creating any file: a missing key leaves nothing behind
        try:
            # The atomic writer removes its temp file if anything below raises, so retries start clean.
            with local.atomic_writer(local_path) as f:
                _drain(uri, resp, f.write, progress)
        finally:
            resp.close()  # already closed by _drain unless the temp file could not be created
            resp.release_conn()
    _call(uri, "GET", attempt)


def sha256_of(uri: str) -> str:
    """The object's sha256: from its metadata, or (objects written by other tools) by streaming it."""
    info = stat(uri)
    if info.sha256:
        return info.sha256
    client, bucket, key = _object(uri)
    return _call(uri, "GET", lambda: _drain(uri, client.get_object(bucket, key), lambda _chunk: None, None))


def _part_size(length: int, part_size: int | None) -> int:
    """Part size: the requested/default one, grown if needed to stay within S3's 10,000 parts."""
    size = part_size or DEFAULT_PART_SIZE
    return max(size, math.ceil(length / MAX_PARTS / MiB) * MiB)


def put_stream(stream: BinaryIO, uri: str, *, length: int = -1, sha256: str | None = None,
               part_size: int | None = None, progress: Progress | None = None) -> None:
    """Upload a stream atomically with its sha256 as metadata (see module docstring).

    The sha256 must be known before the upload starts (metadata is sent first). Without ``sha256``
    and ``length``, a seekable stream is hashed in a first pass and rewound; other streams are spooled.
    Retries need a seekable stream; a non-seekable one with a given sha256 is tried once.
    """
    client, bucket, key = _object(uri)
    spool = None
    seekable = getattr(stream, "seekable", lambda: False)()
    if sha256 is None or length < 0:
        if not seekable:
            spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY)
            while chunk := stream.read(CHUNK_SIZE):
                spool.write(chunk)
            spool.seek(0)
            stream, seekable = spool, True
        start = stream.tell()
        digest, length = sha256_stream(stream)
        stream.seek(start)
        if sha256 is not None and sha256 != digest:
            raise StorageError(uri, "stream content does not match the given sha256", "check the source data")
        sha256 = digest
    start = stream.tell() if seekable else 0
    psize = _part_size(length, part_size)

    def attempt() -> None:
        if seekable:
            stream.seek(start)
        reader = HashingReader(stream, progress)
        try:
            client.put_object(bucket, key, reader, length, metadata={SHA256_META: sha256}, part_size=psize)
        except BaseException:
            reader.take_back_progress()
            raise
        if reader.hexdigest() != sha256:
            # The content changed under us after hashing: do not leave an object that fails verification.
            client.remove_object(bucket, key)
            raise StorageError(uri, "the source changed while uploading (sha256 mismatch); upload removed",
                               "do not modify files while they are uploaded")
    try:
        _call(uri, "PUT", attempt, attempts=retry.DEFAULT_ATTEMPTS if seekable else 1)
    finally:
        if spool is not None:
            spool.close()


def write_bytes(uri: str, data: bytes) -> None:
    """Upload ``data`` as the object's content."""
    put_stream(io.BytesIO(data), uri, length=len(data), sha256=sha256_bytes(data))


def put_file(local_path: str, uri: str, *, move: bool = False, part_size: int | None = None,
             progress: Progress | None = None) -> None:
    """Upload a local file (hashed first); with ``move=True`` delete it once the upload succeeded."""
    with local.os_errors(local_path, "read"), open(local_path, "rb") as f:
        digest, length = sha256_stream(f)
        f.seek(0)
        put_stream(f, uri, length=length, sha256=digest, part_size=part_size, progress=progress)
    if move:
        with local.os_errors(local_path, "remove after upload"):
            os.unlink(local_path)


def delete(uri: str, missing_ok: bool = True) -> None:
    """Remove the object; a missing object is an error only with ``missing_ok=False``."""
    client, bucket, key = _object(uri)
    if not missing_ok and not exists(uri):
        raise StorageError(uri, "delete: object does not exist", "check the URI")
    _call(uri, "DELETE", lambda: client.remove_object(bucket, key))


def delete_prefix(prefix_uri: str) -> int:
    """Remove every object under ``prefix_uri`` (as a directory); returns how many were removed."""
    bucket, key = split_s3(prefix_uri)
    if not key:
        raise StorageError(prefix_uri, "refusing to empty a whole bucket", "pass a prefix: s3://bucket/prefix")
    client = s3.get_client(prefix_uri)
    keys = [split_s3(info.uri)[1] for info in list_files(prefix_uri)]

    def attempt() -> None:
        # remove_objects is lazy and batches 1000 keys per request; errors come back as items.
        errors = list(client.remove_objects(bucket, (DeleteObject(k) for k in keys)))
        if errors:
            raise StorageError(prefix_uri, f"{len(errors)} objects could not be deleted, first: {errors[0]}",
                               "check the credentials' delete permission")
    if keys:
        _call(prefix_uri, "DELETE prefix", attempt)
    return len(keys)
