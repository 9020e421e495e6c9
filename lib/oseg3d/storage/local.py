"""Local-filesystem backend: the same operations as the S3 backend, on plain paths.

Every write goes to a temp file in the destination directory (``.<name>.tmp-<pid>-<random>``), is
fsynced and then renamed over the final name with ``os.replace``. A crash or exception therefore
never leaves a half-written file under the final name, which is what lets a re-run trust "the file
exists" as "the step finished". Exceptions also remove the temp file; only a hard kill can leave one,
and listings ignore such leftovers.
"""
from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import shutil
from typing import BinaryIO, Iterator

from oseg3d.errors import StorageError

from .checksum import CHUNK_SIZE, HashingReader, Progress
from .object_info import ObjectInfo

__all__ = ["atomic_writer", "is_temp_name", "os_errors", "no_space", "exists", "stat", "list_files", "read_bytes",
           "write_bytes", "put_stream", "get_file", "put_file", "delete", "delete_prefix"]

_TEMP_RE = re.compile(r"^\..+\.tmp-\d+-[0-9a-f]{8}$")
# Out of space, over quota, or over a file-size limit: waiting or retrying cannot help, the user must free space.
_NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


def is_temp_name(name: str) -> bool:
    """Return True if ``name`` is a temp file of :func:`atomic_writer` (in progress or left by a crash)."""
    return bool(_TEMP_RE.match(name))


@contextlib.contextmanager
def os_errors(path: str, what: str) -> Iterator[None]:
    """Turn OSErrors into StorageErrors that name the path and a fix."""
    try:
        yield
    except StorageError:
        raise
    except FileNotFoundError as exc:
        raise StorageError(path, f"{what}: no such file or directory", "check the path") from exc
    except PermissionError as exc:
        raise StorageError(path, f"{what}: permission denied", "check the file and directory permissions") from exc
    except IsADirectoryError as exc:
        raise StorageError(path, f"{what}: is a directory", "pass a file path") from exc
    except OSError as exc:
        if exc.errno in _NO_SPACE:
            raise no_space(path, what, exc) from exc
        raise StorageError(path, f"{what}: {exc.strerror or exc}", "check the path and free disk space") from exc


def no_space(path: str, what: str, exc: OSError) -> StorageError:
    """The StorageError for a full disk (ENOSPC), an exceeded quota or file-size limit at ``path``."""
    where = os.path.dirname(os.path.abspath(path))
    return StorageError(path, f"{what}: {exc.strerror or exc} (disk full or quota/file-size limit reached)",
                        f"free disk space on the volume holding {where} (or write to a larger one), then rerun")


def _fsync_dir(directory: str) -> None:
    # Makes the rename itself durable; not every filesystem supports opening a directory, so best effort.
    try:
        fd = os.open(directory or ".", os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_writer(path: str) -> Iterator[BinaryIO]:
    """Open a temp file next to ``path``; on clean exit fsync it and rename it to ``path``.

    If the block raises, the temp file is removed and ``path`` is left as it was.

    Args:
        path: the final file path; missing parent directories are created.

    Returns:
        A context manager yielding the binary file object to write.
    """
    directory, name = os.path.split(os.path.abspath(path))
    with os_errors(path, "write"):
        os.makedirs(directory, exist_ok=True)
        tmp = os.path.join(directory, f".{name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
        f = open(tmp, "xb")
    try:
        try:
            with f:
                yield f
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:
            # A full disk shows up in the caller's write() or in fsync/close: name the destination, not a
            # bare OSError from deep inside the block. Other OSErrors may concern the caller's source.
            if exc.errno in _NO_SPACE:
                raise no_space(path, "write", exc) from exc
            raise
        with os_errors(path, "write"):
            os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(directory)


def exists(path: str) -> bool:
    """Return True if a file or directory exists at ``path``."""
    return os.path.exists(path)


def stat(path: str) -> ObjectInfo:
    """Describe the file at ``path`` (see :class:`ObjectInfo`); raises StorageError if it is missing."""
    with os_errors(path, "stat"):
        st = os.stat(path)
    if not os.path.isfile(path):
        raise StorageError(path, "stat: not a regular file", "pass a file path")
    return ObjectInfo(uri=path, rel=os.path.basename(path), size=st.st_size, etag=f"{st.st_size}-{st.st_mtime_ns}")


def list_files(prefix: str, recursive: bool = True) -> list[ObjectInfo]:
    """List the files under directory ``prefix`` (empty if it is not a directory), sorted by ``rel``."""
    if not os.path.isdir(prefix):
        return []
    found = []
    with os_errors(prefix, "list"):
        if recursive:
            for root, dirs, files in os.walk(prefix):
                dirs.sort()
                found += [os.path.join(root, f) for f in files]
        else:
            found = [e.path for e in os.scandir(prefix) if e.is_file()]
        infos = []
        for path in found:
            if is_temp_name(os.path.basename(path)) or not os.path.isfile(path):
                continue
            st = os.stat(path)
            rel = os.path.relpath(path, prefix).replace(os.sep, "/")
            infos.append(ObjectInfo(uri=path, rel=rel, size=st.st_size, etag=f"{st.st_size}-{st.st_mtime_ns}"))
    return sorted(infos, key=lambda i: i.rel)


def read_bytes(path: str) -> bytes:
    """Return the content of the file at ``path``."""
    with os_errors(path, "read"), open(path, "rb") as f:
        return f.read()


def write_bytes(path: str, data: bytes) -> None:
    """Atomically write ``data`` to ``path``."""
    with atomic_writer(path) as f:
        f.write(data)


def put_stream(stream: BinaryIO, path: str, *, length: int = -1, sha256: str | None = None,
               progress: Progress | None = None) -> None:
    """Atomically copy ``stream`` to ``path``, checking ``length`` and ``sha256`` when given."""
    reader = HashingReader(stream, progress)
    with atomic_writer(path) as f:
        while chunk := reader.read(CHUNK_SIZE):
            f.write(chunk)
        if length >= 0 and reader.count != length:
            raise StorageError(path, f"stream gave {reader.count} bytes, expected {length}",
                               "pass the right length or a complete stream")
        if sha256 and reader.hexdigest() != sha256:
            raise StorageError(path, "stream content does not match the given sha256 (truncated or corrupt)",
                               "check the source data")


def get_file(src: str, dst: str, progress: Progress | None = None) -> None:
    """Copy file ``src`` to ``dst`` atomically (the local flavour of a download)."""
    with os_errors(src, "read"), open(src, "rb") as f:
        put_stream(f, dst, length=os.fstat(f.fileno()).st_size, progress=progress)


def put_file(src: str, dst: str, *, move: bool = False, progress: Progress | None = None) -> None:
    """Copy (or with ``move=True`` rename) file ``src`` to ``dst`` atomically."""
    if move:
        with os_errors(dst, "move"):
            os.makedirs(os.path.dirname(os.path.abspath(dst)), exist_ok=True)
        try:
            size = os.stat(src).st_size
            os.replace(src, dst)  # atomic on one filesystem, and no copy at all
            _fsync_dir(os.path.dirname(os.path.abspath(dst)))
            if progress is not None:
                progress(size)
            return
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                with os_errors(src, "move"):
                    raise
        # Different filesystems: copy to a temp file over there, then drop the source.
    get_file(src, dst, progress)
    if move:
        with os_errors(src, "remove after copy"):
            os.unlink(src)


def delete(path: str, missing_ok: bool = True) -> None:
    """Remove the file at ``path``; a missing file is an error only with ``missing_ok=False``."""
    try:
        with os_errors(path, "delete"):
            os.unlink(path)
    except StorageError:
        if missing_ok and not os.path.lexists(path):
            return
        raise


def delete_prefix(prefix: str) -> int:
    """Remove directory ``prefix`` and everything under it; returns the number of files removed."""
    if os.path.abspath(prefix) == os.path.abspath(os.sep):
        raise StorageError(prefix, "refusing to delete the filesystem root", "pass a narrower directory")
    if not os.path.isdir(prefix):
        return 0
    count = sum(len(files) for _, _, files in os.walk(prefix))
    with os_errors(prefix, "delete"):
        shutil.rmtree(prefix)
    return count
