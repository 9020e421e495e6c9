"""Run one oseg3d job and SIGKILL this process at a chosen storage event (for test_crash_safety.py).

    python _kill_driver.py JOB ARGS_JSON        (JOB: create_data | precompute_clip | upload_tree | download_tree)

``OSEG3D_TEST_KILL=<event>:<n>:<phase>`` picks the moment; empty: no kill, and the last stdout line is
``{"events": {...}}``, how many of each event the uninterrupted job had (the tests draw kill points from
these counts with a seeded generator). Only events on paths under ``OSEG3D_TEST_KILL_ROOT`` count (the
job's output; imports may write caches of their own). Events, counted process-wide (threads included):

* ``write``   entering ``storage.local.atomic_writer`` (every local write, downloads included); phases
  ``mid`` (half of the first write() reached the temp file) and ``end`` (content complete, not renamed);
* ``replace`` ``os.replace`` (the rename that publishes a file, and local moves); phases ``before``/``after``;
* ``put``     ``storage.s3_backend.put_stream`` (every S3 upload); phases ``mid`` (half the source read)
  and ``after`` (the object is complete).

The kill is a real ``SIGKILL`` of this process: no ``finally``, no atexit, no flush.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import threading

from oseg3d.storage import local, s3_backend

COUNTS = {"write": 0, "replace": 0, "put": 0}
_LOCK = threading.Lock()
_SPEC = os.environ.get("OSEG3D_TEST_KILL", "")
_EVENT, _N, _PHASE = (_SPEC.split(":")[0], int(_SPEC.split(":")[1]), _SPEC.split(":")[2]) if _SPEC else ("", 0, "")
_ROOT = os.environ["OSEG3D_TEST_KILL_ROOT"]


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _tick(event: str, path) -> str:
    """Count one event on `path`; the phase to die in if this is the chosen one, else ""."""
    if not str(path).startswith(_ROOT):
        return ""
    with _LOCK:
        COUNTS[event] += 1
        return _PHASE if event == _EVENT and COUNTS[event] == _N else ""


class _HalfThenDie:
    """A file whose first write() puts half the bytes on disk (fsynced), then kills the process."""

    def __init__(self, f):
        self._f = f

    def write(self, data) -> None:
        data = bytes(data)
        self._f.write(data[: max(1, len(data) // 2)])
        self._f.flush()
        os.fsync(self._f.fileno())
        _die()

    def __getattr__(self, name):
        return getattr(self._f, name)


class _DieMidRead:
    """A source stream that kills the process once half of `length` bytes have been read from it."""

    def __init__(self, stream, length: int):
        self._s, self._left = stream, max(1, length // 2)

    def read(self, size: int = -1) -> bytes:
        data = self._s.read(size)
        self._left -= len(data)
        if self._left <= 0:
            _die()
        return data

    def __getattr__(self, name):
        return getattr(self._s, name)


_writer = local.atomic_writer


@contextlib.contextmanager
def _atomic_writer(path):
    hit = _tick("write", path)
    with _writer(path) as f:
        yield _HalfThenDie(f) if hit == "mid" else f
        if hit == "end":
            f.flush()
            _die()


_replace = os.replace


def _os_replace(src, dst, *args, **kwargs):
    hit = _tick("replace", dst)
    if hit == "before":
        _die()
    _replace(src, dst, *args, **kwargs)
    if hit == "after":
        _die()


_put_stream = s3_backend.put_stream


def _s3_put_stream(stream, uri, *, length=-1, **kwargs):
    hit = _tick("put", uri)
    _put_stream(_DieMidRead(stream, length) if hit == "mid" else stream, uri, length=length, **kwargs)
    if hit == "after":
        _die()


local.atomic_writer, os.replace, s3_backend.put_stream = _atomic_writer, _os_replace, _s3_put_stream


def main(job: str, args: dict) -> None:
    from oseg3d import storage

    if job == "create_data":
        from oseg3d.data.create_data import CreateDataParams, create_data

        create_data(args["raw"], args["out"], CreateDataParams(kind=args["kind"], num_points=args["num_points"]))
    elif job == "precompute_clip":
        from oseg3d.steps import precompute_clip

        precompute_clip.run(args["dataset"], raw=args["raw"], random_init=True, workers=1, devices="cpu",
                            batch_size=2, progress=False)
    elif job == "upload_tree":
        storage.upload_tree(args["src"], args["dst"], workers=2, skip_existing=True, progress=False)
    elif job == "download_tree":
        storage.download_tree(args["src"], args["dst"], workers=2, skip_existing=True, progress=False)
    else:
        raise SystemExit(f"unknown job {job!r}")
    print(json.dumps({"events": COUNTS}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], json.loads(sys.argv[2]))
