"""Where a pipeline step keeps its data, how it knows it is already done, and how inputs reach local disk.

KFP passes every artifact through its own store, which is fine for reports and too slow and too small for
datasets and checkpoints (anchors.md §5: "pass URIs, not tensors"). So each step's data lives in a *home*:

- `<workspace>/<step>-<fingerprint>` when the run names a workspace (a local folder or `s3://` prefix): the
  local CLI always does, so `--resume` finds finished steps and half-finished training there;
- else the artifact's own object-store location (`minio://` / `s3://` on a cluster, written through our
  storage layer, not the KFP launcher), or the artifact's local path under `kfp.local`.

The KFP artifact itself holds a small `oseg3d_ref.json` {home, fingerprint} plus the small files people
browse. A step's fingerprint hashes its parameters, the package version and its inputs' fingerprints, so
a changed upstream invalidates everything below it. `_COMPLETE.json` in the home is written last; a step
whose home holds a matching one is skipped.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from oseg3d import __version__, storage
from oseg3d.errors import DataError
from oseg3d.storage.uri import is_s3, join

__all__ = ["Handle", "REF_NAME", "MARKER_NAME", "fingerprint", "home_for", "object_store_uri", "read_ref",
           "write_ref", "completed", "local_input", "run_step", "publish", "say"]

REF_NAME = "oseg3d_ref.json"
MARKER_NAME = "_COMPLETE.json"


@dataclass(frozen=True)
class Handle:
    """A step output: where its data lives and the fingerprint that produced it."""

    uri: str
    fingerprint: str


def say(msg: str) -> None:
    """One line on stderr, which kfp.local and pod logs both show (logging may not be configured there)."""
    print(f"[oseg3d] {msg}", file=sys.stderr, flush=True)


def fingerprint(step: str, params: dict, inputs: list[str]) -> str:
    """sha256 of the step name, its parameters, the package version and its inputs' fingerprints."""
    blob = json.dumps({"step": step, "version": __version__, "params": params, "inputs": inputs},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def object_store_uri(artifact_uri: str) -> str | None:
    """`s3://bucket/key` for an artifact URI KFP placed in an S3-compatible store (MinIO included), else None."""
    for scheme in ("minio://", "s3://"):
        if artifact_uri.startswith(scheme):
            return "s3://" + artifact_uri[len(scheme):]
    return None


def home_for(step: str, fp: str, artifact_path: str, artifact_uri: str = "", workspace: str = "") -> str:
    """Where step `step` with fingerprint `fp` keeps its data (see the module docstring)."""
    if workspace:
        return join(workspace, f"{step}-{fp[:16]}")
    remote = object_store_uri(artifact_uri or "")
    return join(remote, "data") if remote else artifact_path


def write_ref(artifact_path: str, handle: Handle) -> None:
    os.makedirs(artifact_path, exist_ok=True)
    storage.write_json(os.path.join(artifact_path, REF_NAME), {"home": handle.uri, "fingerprint": handle.fingerprint})


def read_ref(artifact_path: str) -> Handle:
    """The handle an upstream step left in its artifact."""
    path = os.path.join(artifact_path, REF_NAME)
    if not os.path.isfile(path):
        raise DataError(path, "input artifact has no oseg3d reference", "pass the output of an oseg3d step")
    ref = json.loads(Path(path).read_text())
    return Handle(ref["home"], ref["fingerprint"])


def completed(home: str, fp: str, name: str = MARKER_NAME) -> dict | None:
    """The completion record of `home` if it was written for fingerprint `fp`, else None."""
    marker = join(home, name)
    if not storage.exists(marker):
        return None
    record = storage.read_json(marker)
    return record if record.get("fingerprint") == fp else None


def _cache_root() -> Path:
    return Path(os.environ.get("OSEG3D_CACHE_DIR") or Path(tempfile.gettempdir()) / "oseg3d-cache")


@contextmanager
def local_input(handle: Handle) -> Iterator[str]:
    """A local folder holding `handle`'s data: the home itself when local, else a download cached per
    fingerprint (complete downloads only: the cache entry is renamed into place when finished)."""
    if not is_s3(handle.uri):
        yield handle.uri
        return
    root = _cache_root()
    final = root / handle.fingerprint
    if not final.is_dir():
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{handle.fingerprint[:12]}-"))
        try:
            storage.download_tree(handle.uri, tmp, desc=f"get {handle.fingerprint[:12]}")
            os.replace(tmp, final)
        except FileExistsError:  # another process finished the same download first
            shutil.rmtree(tmp, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    yield str(final)


@contextmanager
def _local_output(home: str) -> Iterator[str]:
    """The folder a step writes into: the home when local; for a remote home a scratch folder seeded with
    what the home already holds (a retried training step finds its checkpoints) and uploaded at the end."""
    if not is_s3(home):
        os.makedirs(home, exist_ok=True)
        yield home
        return
    scratch = Path(tempfile.mkdtemp(prefix="oseg3d-out-"))
    try:
        if storage.list_files(home, recursive=True):
            storage.download_tree(home, scratch, desc="resume")
        yield str(scratch)
        storage.upload_tree(scratch, home, skip_existing=True, desc="put")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def run_step(step: str, params: dict, inputs: dict[str, Handle], artifact_path: str, artifact_uri: str,
             workspace: str, body: Callable[[str, dict[str, str]], dict], in_place: str = "") -> tuple[Handle, dict]:
    """Run `body(out_dir, local_inputs)` unless this exact step already completed in its home.

    Returns the output handle (also written into the artifact) and the body's result (the stored one on a
    skip). The completion marker is written after everything else has reached the home.

    `in_place` names an input whose home the step adds files to instead of getting its own (precompute_clip
    adds a feature cache beside a dataset's frames without copying them); its marker is then
    `_COMPLETE.<step>.json`, so the upstream step's own marker stays as it was.
    """
    fp = fingerprint(step, params, [inputs[k].fingerprint for k in sorted(inputs)])
    home = inputs[in_place].uri if in_place else home_for(step, fp, artifact_path, artifact_uri, workspace)
    marker = f"_COMPLETE.{step}.json" if in_place else MARKER_NAME
    handle = Handle(home, fp)
    record = completed(home, fp, marker)
    if record is not None:
        say(f"{step}: skipped, already complete in {home} (fingerprint {fp[:12]})")
        write_ref(artifact_path, handle)
        return handle, record["result"]
    say(f"{step}: running (fingerprint {fp[:12]}, home {home})")
    start = time.time()
    if in_place:  # the step writes through the storage layer into the (possibly remote) input's home
        result = body(home, {in_place: home})
    else:
        with _local_output(home) as out, ExitStack() as stack:
            staged = {name: stack.enter_context(local_input(h)) for name, h in inputs.items()}
            result = body(out, staged)
    storage.write_json(join(home, marker), {
        "step": step, "fingerprint": fp, "params": params, "version": __version__,
        "inputs": {k: v.fingerprint for k, v in inputs.items()}, "result": result,
        "seconds": round(time.time() - start, 1)})
    write_ref(artifact_path, handle)
    say(f"{step}: complete in {time.time() - start:.1f} s")
    return handle, result


def publish(handle: Handle, name: str, dest: str) -> bool:
    """Copy the small file `name` of a step's home to `dest` (a KFP artifact path); False if absent."""
    src = join(handle.uri, name)
    if not storage.exists(src):
        return False
    os.makedirs(os.path.dirname(dest) or ".", exist_ok=True)
    Path(dest).write_bytes(storage.read_bytes(src))
    return True
