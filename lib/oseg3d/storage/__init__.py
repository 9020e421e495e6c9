"""One storage API over local paths (or ``file://`` URIs) and ``s3://bucket/key`` URIs.

Pipeline steps read and write through these functions and never care where the data lives: the
URI picks the backend (``local.py`` or ``s3_backend.py``), which implement the same operations with
the same guarantees:

* atomic writes: a failed or killed write never leaves a partial file/object under the final name;
* checksums: S3 objects carry their sha256 as metadata and every S3 read verifies it;
* retries with backoff on transient S3 errors, and every failure is a :class:`StorageError` that names
  the URI, the problem and the fix.

S3 is configured from the environment only; see ``s3.py`` (``OSEG3D_S3_ENDPOINT``,
``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ...). Parallel tree copies live in ``transfer.py``.
"""
from __future__ import annotations

from oseg3d.errors import StorageError

from .api import (delete, delete_prefix, exists, get_file, list_files, put_file, put_stream, read_bytes, read_json,
                  read_text, sha256_of, stat, write_bytes, write_json, write_text)
from .checksum import Progress, sha256_bytes, sha256_file
from .object_info import ObjectInfo
from .transfer import TransferResult, copy_files, copy_tree, download_tree, upload_tree
from .uri import basename, dirname, is_s3, join, normalise, split_s3

__all__ = [
    "ObjectInfo", "StorageError", "Progress", "TransferResult",
    "is_s3", "split_s3", "join", "basename", "dirname", "normalise",
    "exists", "stat", "list_files", "read_bytes", "write_bytes", "read_text", "write_text",
    "read_json", "write_json", "put_stream", "get_file", "put_file", "delete", "delete_prefix",
    "sha256_of", "sha256_bytes", "sha256_file",
    "upload_tree", "download_tree", "copy_tree", "copy_files",
]
