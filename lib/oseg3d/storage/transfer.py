"""Parallel copies of many files: local -> S3, S3 -> local, local -> local, S3 -> S3.

Datasets are thousands of files; copying them one by one is latency-bound, so a thread pool keeps
several transfers in flight (the S3 client is thread-safe and pooled). Every single copy goes through
``api.put_file`` / ``api.get_file`` and keeps their guarantees (atomic, checksummed, retried). A tqdm
bar shows bytes, rate and ETA. The first failure cancels the files not yet started and is re-raised.
"""
from __future__ import annotations

import logging
import os
import tempfile
import threading
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from typing import Iterable, NamedTuple

from tqdm.auto import tqdm

from oseg3d.errors import StorageError

from . import api
from .object_info import ObjectInfo
from .uri import is_s3, join, normalise

__all__ = ["TransferResult", "copy_files", "copy_tree", "upload_tree", "download_tree"]

log = logging.getLogger(__name__)
DEFAULT_WORKERS = 8


class TransferResult(NamedTuple):
    """What a transfer did: files and bytes copied, and files skipped as already up to date."""

    files: int
    bytes: int
    skipped: int = 0


def _same_content(src: ObjectInfo, dst_uri: str) -> bool:
    """True if ``dst_uri`` exists with the same size and sha256 as ``src`` (hashing local files as needed)."""
    try:
        dst = api.stat(dst_uri)
    except StorageError:
        return False
    if dst.size != src.size:
        return False
    return (dst.sha256 or api.sha256_of(dst_uri)) == (src.sha256 or api.sha256_of(src.uri))


def _copy_one(src: ObjectInfo, dst: str, progress) -> None:
    """Copy one file/object with the right primitive for the (source, destination) kinds."""
    if not is_s3(src.uri):
        api.put_file(src.uri, dst, progress=progress)
    elif not is_s3(dst):
        api.get_file(src.uri, dst, progress=progress)
    else:
        # Bucket to bucket (possibly different endpoints later): stage through a local temp file.
        with tempfile.TemporaryDirectory(prefix="oseg3d-copy-") as tmp:
            staged = os.path.join(tmp, "object")
            api.get_file(src.uri, staged)
            api.put_file(staged, dst, move=True, progress=progress)


def copy_files(pairs: Iterable[tuple[str | ObjectInfo, str]], workers: int = DEFAULT_WORKERS, *,
               skip_existing: bool = False, desc: str | None = None, progress: bool = True) -> TransferResult:
    """Copy (source, destination) pairs in parallel.

    Args:
        pairs: sources as URIs or :class:`ObjectInfo` (from a listing; saves a stat) and destination URIs.
        workers: number of files in flight.
        skip_existing: skip a pair whose destination already has the same size and sha256.
        desc: label of the progress bar.
        progress: show a tqdm progress bar (bytes, rate, ETA).

    Returns:
        Files and bytes copied, and files skipped.

    Raises:
        StorageError: the first copy that failed (the others not yet started are cancelled).
    """
    pairs = [(s, normalise(d)) for s, d in pairs]
    workers = max(1, int(workers))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="oseg3d-transfer") as pool:
        # Sizes up front so the bar has a total; stats run in parallel because on S3 each is a request.
        infos = list(pool.map(lambda s: s if isinstance(s, ObjectInfo) else api.stat(s), (s for s, _ in pairs)))
        total = sum(i.size for i in infos)
        lock = threading.Lock()
        counts = {"files": 0, "bytes": 0, "skipped": 0}
        bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=desc,
                   disable=not progress, dynamic_ncols=True)

        def advance(n: int) -> None:
            with lock:  # tqdm.update is not atomic across threads
                bar.update(n)

        def run(info: ObjectInfo, dst: str) -> None:
            if skip_existing and _same_content(info, dst):
                advance(info.size)
                kind = "skipped"
            else:
                _copy_one(info, dst, advance)
                kind = "files"
            with lock:
                counts[kind] += 1
                if kind == "files":
                    counts["bytes"] += info.size
                bar.set_postfix_str(f"{counts['files'] + counts['skipped']}/{len(infos)} files", refresh=False)

        try:
            futures = [pool.submit(run, info, dst) for info, (_, dst) in zip(infos, pairs)]
            done, pending = wait(futures, return_when=FIRST_EXCEPTION)
            for fut in pending:
                fut.cancel()
            for fut in futures:
                if fut.done() and not fut.cancelled() and fut.exception() is not None:
                    raise fut.exception()
        finally:
            bar.close()
    return TransferResult(counts["files"], counts["bytes"], counts["skipped"])


def copy_tree(src_uri: str | os.PathLike, dst_uri: str | os.PathLike, *, workers: int = DEFAULT_WORKERS,
              skip_existing: bool = False, desc: str | None = None, progress: bool = True,
              allow_empty: bool = False) -> TransferResult:
    """Copy every file under ``src_uri`` to the same relative path under ``dst_uri``.

    Args:
        src_uri: source directory or S3 prefix.
        dst_uri: destination directory or S3 prefix.
        workers: number of files in flight.
        skip_existing: skip files already present at the destination with the same size and sha256.
        desc: label of the progress bar (default: the source).
        progress: show a progress bar.
        allow_empty: return zeros instead of raising when the source holds no files.

    Returns:
        Files and bytes copied, and files skipped.

    Raises:
        StorageError: the source holds no files (unless ``allow_empty``), or a copy failed.
    """
    src, dst = normalise(src_uri), normalise(dst_uri)
    infos = api.list_files(src, recursive=True)
    if not infos and not allow_empty:
        raise StorageError(src, "no files to copy", "check the source path/prefix, or pass allow_empty=True")
    log.info("copying %d files from %s to %s", len(infos), src, dst)
    return copy_files([(i, join(dst, i.rel)) for i in infos], workers, skip_existing=skip_existing,
                      desc=desc or os.path.basename(src.rstrip("/")) or src, progress=progress)


def upload_tree(local_dir: str | os.PathLike, dst_uri: str | os.PathLike, *, workers: int = DEFAULT_WORKERS,
                skip_existing: bool = False, desc: str | None = None, progress: bool = True) -> TransferResult:
    """Upload a local directory tree to ``dst_uri`` (an S3 prefix or another directory).

    Args:
        local_dir: the directory to upload.
        dst_uri: destination prefix.
        workers: number of files in flight.
        skip_existing: skip files already present with the same size and sha256.
        desc: label of the progress bar.
        progress: show a progress bar.

    Returns:
        Files and bytes copied, and files skipped.
    """
    src = normalise(local_dir)
    if is_s3(src) or not os.path.isdir(src):
        raise StorageError(src, "upload_tree needs an existing local directory", "check the path")
    return copy_tree(src, dst_uri, workers=workers, skip_existing=skip_existing, desc=desc, progress=progress)


def download_tree(src_uri: str | os.PathLike, local_dir: str | os.PathLike, *, workers: int = DEFAULT_WORKERS,
                  skip_existing: bool = False, desc: str | None = None, progress: bool = True) -> TransferResult:
    """Download everything under ``src_uri`` into a local directory (created if missing).

    Args:
        src_uri: source prefix (S3) or directory.
        local_dir: destination directory.
        workers: number of files in flight.
        skip_existing: skip files already present with the same size and sha256.
        desc: label of the progress bar.
        progress: show a progress bar.

    Returns:
        Files and bytes copied, and files skipped.
    """
    dst = normalise(local_dir)
    if is_s3(dst):
        raise StorageError(dst, "download_tree needs a local destination", "use copy_tree between buckets")
    return copy_tree(src_uri, dst, workers=workers, skip_existing=skip_existing, desc=desc, progress=progress)
