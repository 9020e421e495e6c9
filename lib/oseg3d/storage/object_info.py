"""``ObjectInfo``: what ``stat`` and ``list_files`` say about one file or object, the same for both backends."""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ObjectInfo"]


@dataclass(frozen=True)
class ObjectInfo:
    """One file or object.

    Attributes:
        uri: full location (plain local path or ``s3://bucket/key``).
        rel: path relative to the listed prefix, ``/``-separated (for ``stat``: the base name).
        size: size in bytes.
        etag: a version tag that changes when the content changes: the S3 ETag, or
            ``f"{size}-{mtime_ns}"`` for local files.
        sha256: hex sha256 of the content if known without reading it (S3 metadata written by this
            package); None for local files and for objects written by other tools. Listings may leave
            it None on servers that do not return user metadata in listings; ``stat`` fills it.
    """

    uri: str
    rel: str
    size: int
    etag: str
    sha256: str | None = None
