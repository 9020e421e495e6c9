"""SHA-256 helpers and a file-object wrapper that hashes, counts and reports progress as it is read.

Every object this package writes to S3 carries the sha256 of its content as user metadata
(``x-amz-meta-sha256``) and every read checks it, so a truncated or corrupted transfer is an error
instead of silently bad training data.
"""
from __future__ import annotations

import hashlib
import os
from typing import BinaryIO, Callable

__all__ = ["SHA256_META", "CHUNK_SIZE", "sha256_bytes", "sha256_file", "sha256_stream", "HashingReader",
           "Progress"]

# minio prefixes user metadata keys with "x-amz-meta-"; this is the key we pass and read back.
SHA256_META = "sha256"
SHA256_HEADER = "x-amz-meta-sha256"
# 1 MiB keeps memory flat and progress bars smooth without making syscalls dominate.
CHUNK_SIZE = 1 << 20

Progress = Callable[[int], None]
"""Called with the number of bytes just transferred (negative to take back bytes of a failed attempt)."""


def sha256_bytes(data: bytes) -> str:
    """Return the sha256 hex digest of ``data``.

    Args:
        data: the content.

    Returns:
        64 lowercase hex characters.
    """
    return hashlib.sha256(data).hexdigest()


def sha256_stream(stream: BinaryIO) -> tuple[str, int]:
    """Hash a stream to its end.

    Args:
        stream: a binary file object, read from its current position.

    Returns:
        ``(sha256 hex digest, number of bytes read)``.
    """
    h, n = hashlib.sha256(), 0
    while chunk := stream.read(CHUNK_SIZE):
        h.update(chunk)
        n += len(chunk)
    return h.hexdigest(), n


def sha256_file(path: str | os.PathLike) -> str:
    """Return the sha256 hex digest of a local file.

    Args:
        path: the file.

    Returns:
        64 lowercase hex characters.
    """
    with open(path, "rb") as f:
        return sha256_stream(f)[0]


class HashingReader:
    """Wrap a binary stream: hash and count what is read and report it to a progress callback.

    Reads are capped at ``CHUNK_SIZE`` so that callers asking for a whole multipart part (minio reads
    5+ MiB at once) still produce steady progress updates.
    """

    def __init__(self, raw: BinaryIO, progress: Progress | None = None):
        self.raw = raw
        self.progress = progress
        self.count = 0
        self._hash = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        """Read up to ``min(size, CHUNK_SIZE)`` bytes (``CHUNK_SIZE`` for ``size < 0``)."""
        data = self.raw.read(CHUNK_SIZE if size is None or size < 0 else min(size, CHUNK_SIZE))
        if data:
            self._hash.update(data)
            self.count += len(data)
            if self.progress is not None:
                self.progress(len(data))
        return data

    def hexdigest(self) -> str:
        """The sha256 of everything read so far."""
        return self._hash.hexdigest()

    def take_back_progress(self) -> None:
        """Report the bytes of a failed attempt as undone, so a retried transfer is not counted twice."""
        if self.progress is not None and self.count:
            self.progress(-self.count)
        self.count = 0
