"""SIGKILL create_data, precompute_clip, tree uploads and downloads at seeded random storage events, rerun:
the result is byte-identical to an uninterrupted run, and no partial file or object is ever visible under
its final name (only hidden temp files, which listings and reruns ignore).

The kill points are drawn with a fixed seed from the events of an uninterrupted run (see _kill_driver.py):
half-way through a file's first write, after its content but before the rename, just before or just after
a rename, half-way through reading an upload's source, just after an upload. Training is covered by
tests/engine/test_resume_after_kill.py and tests/pipelines/test_local_run.py, single uploads by
tests/storage/test_interrupted_upload.py.
"""
from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
from pathlib import Path

import pytest

from oseg3d import storage
from oseg3d.storage.local import is_temp_name

from .conftest import NUM_POINTS, drive, event_counts

SEED = 20240611
KILLED = -signal.SIGKILL
# fields of the reports that say how a run went (time, what was reused), not what it produced
REPORT_RUN_FIELDS = {"elapsed_s", "reused", "computed", "skipped_existing", "frames_per_s"}


def _strip(obj):
    if isinstance(obj, dict):
        return {k: _strip(v) for k, v in obj.items() if k not in REPORT_RUN_FIELDS}
    return obj


def _content(path: Path) -> bytes:
    """A file's bytes; the create_data / precompute_clip reports without their run-specific fields."""
    if path.name == "report.json":
        return json.dumps(_strip(json.loads(path.read_bytes())), sort_keys=True).encode()
    if path.name == "report.md":
        return re.sub(rb"\(reused \d+\)", b"(reused *)", path.read_bytes())
    return path.read_bytes()


def _tree(root: Path) -> tuple[dict[str, bytes], list[str]]:
    """({relative path: content} of every final-named file, [temp files left by killed writes])."""
    files, temps = {}, []
    for dirpath, _, names in os.walk(root):
        for name in names:
            p = Path(dirpath, name)
            rel = p.relative_to(root).as_posix()
            if is_temp_name(name):
                temps.append(rel)
            else:
                files[rel] = _content(p)
    return files, temps


def _assert_nothing_partial(out: Path, ref: dict[str, bytes]) -> list[str]:
    """Right after a kill: every file under a final name is complete (equal to the uninterrupted run's)."""
    files, temps = _tree(out)
    for rel, data in files.items():
        assert rel in ref, f"{rel}: a file the uninterrupted run does not have"
        assert data == ref[rel], f"{rel}: visible under its final name but not complete"
    return temps


def _plans(counts: dict[str, int], phases: dict[str, tuple[str, ...]], salt: str) -> list[str]:
    """One kill point per (event, phase), at a seeded random occurrence of the event."""
    rng = random.Random(f"{SEED}-{salt}")
    return [f"{event}:{rng.randint(1, counts[event])}:{phase}" for event, ps in phases.items() for phase in ps]


@pytest.fixture(scope="module")
def mv_reference(raw_world, tmp_path_factory):
    """An uninterrupted create_data scannet_mv run through the driver: (its tree, event counts, args)."""
    out = tmp_path_factory.mktemp("crash") / "ref"
    args = {"raw": str(raw_world[0]), "out": str(out), "kind": "scannet_mv", "num_points": NUM_POINTS}
    counts = event_counts(drive("create_data", args, out))
    files, temps = _tree(out)
    assert temps == [] and counts["write"] >= 5 and counts["replace"] >= 10
    return out, files, counts, args


def test_create_data_killed_at_random_points_reruns_to_identical_bytes(mv_reference, tmp_path):
    from oseg3d.data.create_data import CreateDataParams, create_data

    _, ref, counts, args = mv_reference
    plans = _plans(counts, {"write": ("mid", "end"), "replace": ("before", "after")}, "create_data")
    for i, plan in enumerate(plans):
        out = tmp_path / f"run{i}"
        scratch = tmp_path / f"scratch{i}"  # the killed job's scratch folders stay in here
        scratch.mkdir()
        run = dict(args, out=str(out))
        proc = drive("create_data", run, out, kill=plan, env={"TMPDIR": str(scratch)})
        assert proc.returncode == KILLED, f"{plan}: {proc.stderr[-2000:]}"
        _assert_nothing_partial(out, ref)
        if i == 0:  # killed twice: the rerun dies at its first rename too
            proc = drive("create_data", run, out, kill=f"replace:1:{random.Random(SEED).choice(['before', 'after'])}",
                         env={"TMPDIR": str(scratch)})
            assert proc.returncode == KILLED, proc.stderr[-2000:]
            _assert_nothing_partial(out, ref)
        create_data(run["raw"], run["out"], CreateDataParams(kind=run["kind"], num_points=NUM_POINTS))
        files, _ = _tree(out)
        assert files.keys() == ref.keys(), plan
        for rel in ref:
            assert files[rel] == ref[rel], f"{plan}: {rel} differs from the uninterrupted run"
        assert {o.rel for o in storage.list_files(out)} == set(ref)  # leftover temp files are not listed
        shutil.rmtree(out)


def test_precompute_clip_killed_at_random_points_reruns_to_identical_bytes(mv_reference, tmp_path):
    from oseg3d.steps import precompute_clip

    dataset, _, _, cd_args = mv_reference
    ref_root = tmp_path / "ref"
    shutil.copytree(dataset, ref_root)
    args = {"dataset": str(ref_root), "raw": cd_args["raw"]}
    counts = event_counts(drive("precompute_clip", args, ref_root / "clip_feat"))
    ref = {k: v for k, v in _tree(ref_root)[0].items() if k.startswith("clip_feat/")}
    assert len(ref) == counts["write"] > 1  # one feature file per frame, and the report
    for i, plan in enumerate(_plans(counts, {"write": ("mid", "end"), "replace": ("before", "after")}, "clip")):
        root = tmp_path / f"run{i}"
        shutil.copytree(dataset, root)
        proc = drive("precompute_clip", dict(args, dataset=str(root)), root / "clip_feat", kill=plan)
        assert proc.returncode == KILLED, f"{plan}: {proc.stderr[-2000:]}"
        before = {k: v for k, v in _tree(root)[0].items() if k.startswith("clip_feat/")}
        assert before.keys() <= ref.keys(), plan
        for rel, data in before.items():
            assert data == ref[rel], f"{plan}: {rel} visible under its final name but not complete"
        rep = precompute_clip.run(str(root), raw=args["raw"], random_init=True, workers=1, devices="cpu",
                                  batch_size=2, progress=False)
        assert rep["skipped_existing"] == len(before.keys() - {"clip_feat/report.json"})
        assert rep["computed"] + rep["skipped_existing"] == rep["frames_total"]
        files = {k: v for k, v in _tree(root)[0].items() if k.startswith("clip_feat/")}
        assert files == ref, plan
        shutil.rmtree(root)


def test_tree_upload_killed_at_random_points_leaves_only_complete_objects(mv_reference, s3_bucket, tmp_path):
    src, ref, _, _ = mv_reference
    dst = storage.join(s3_bucket, "ds")
    args = {"src": str(src), "dst": dst}
    counts = event_counts(drive("upload_tree", args, dst))
    assert counts["put"] == len(ref)
    storage.delete_prefix(dst)
    seen = 0
    for plan in _plans(counts, {"put": ("mid", "after")}, "upload"):
        proc = drive("upload_tree", args, dst, kill=plan)
        assert proc.returncode == KILLED, f"{plan}: {proc.stderr[-2000:]}"
        there = {o.rel for o in storage.list_files(dst)}
        assert there <= set(ref), plan
        seen += len(there)
        for rel in there:  # every visible object is whole: read_bytes checks its size and stored sha256
            assert storage.read_bytes(storage.join(dst, rel)) == (src / rel).read_bytes(), f"{plan}: partial {rel}"
        result = storage.upload_tree(src, dst, workers=2, skip_existing=True, progress=False)
        assert result.skipped == len(there) and result.files == len(ref) - len(there)
        assert {o.rel: storage.sha256_of(o.uri) for o in storage.list_files(dst)} == {
            rel: storage.sha256_file(src / rel) for rel in ref}
        storage.delete_prefix(dst)
    assert seen > 0, "every kill landed before the first object was complete"


def test_tree_download_killed_at_random_points_leaves_only_complete_files(mv_reference, s3_bucket, tmp_path):
    src, ref, _, _ = mv_reference
    remote = storage.join(s3_bucket, "ds")
    storage.upload_tree(src, remote, workers=4, progress=False)
    for i, plan in enumerate(["write:1:mid"] + _plans({"write": len(ref), "replace": len(ref)},
                                                       {"write": ("end",), "replace": ("before", "after")}, "dl")):
        dst = tmp_path / f"dl{i}"
        proc = drive("download_tree", {"src": remote, "dst": str(dst)}, dst, kill=plan)
        assert proc.returncode == KILLED, f"{plan}: {proc.stderr[-2000:]}"
        files, _ = _tree(dst)
        assert set(files) <= set(ref), plan
        for rel in files:
            assert (dst / rel).read_bytes() == (src / rel).read_bytes(), f"{plan}: partial {rel}"
        result = storage.download_tree(remote, dst, workers=2, skip_existing=True, progress=False)
        assert result.skipped == len(files)
        assert {rel: (dst / rel).read_bytes() for rel in _tree(dst)[0]} == {rel: (src / rel).read_bytes()
                                                                           for rel in ref}
