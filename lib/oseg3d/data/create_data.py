"""create_data: a raw ScanNet export (local or s3://) → a processed SV or MV dataset (local or s3://).

ESAM's recipe (reference/esam.md §1.3-1.7): SV takes every 200th raw frame and centres it, MV every
40th in scan coordinates; the per-frame work is in `frame_points`, the per-scene work in `scene_job`.
This module plans the run: reads the split lists, fingerprints each scene's inputs and parameters,
skips scenes whose marker matches, fans the rest out over worker processes, then assembles the Parquet
manifests and the report from the markers (so a rerun after a crash only redoes unfinished scenes).
"""
from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import shutil
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict

from tqdm import tqdm

from oseg3d import storage
from oseg3d.data import processed
from oseg3d.data.report import write_report
from oseg3d.data.scene_job import CreateDataParams, SceneResult, process_scene
from oseg3d.errors import ConfigError, DataError, StorageError
from oseg3d.scannet import layout
from oseg3d.scannet.labels import read_label_tsv

__all__ = ["CreateDataParams", "create_data", "read_split_lists", "RECIPE_VERSION"]

log = logging.getLogger(__name__)
RECIPE_VERSION = "esam-1"  # bump when the per-frame recipe changes: every scene is then redone
_FRAME_KINDS = ("color", "depth", "pose")


def read_split_lists(raw_root: str) -> dict[str, list[str]]:
    """Scene ids of `scannetv2_{train,val}.txt` (root or meta_data/); duplicates kept for the report."""
    out = {}
    for split in ("train", "val"):
        for key in layout.split_file(split):
            uri = storage.join(raw_root, key)
            if storage.exists(uri):
                out[split] = [s.strip() for s in storage.read_text(uri).splitlines() if s.strip()]
                break
        else:
            raise DataError(storage.join(raw_root, layout.split_file(split)[0]), "split list is missing",
                            "add ScanNet's scannetv2_train.txt / scannetv2_val.txt to the data root")
    return out


def _scene_inputs(raw_root: str, scene: str, stride: int) -> tuple[list[int], list[storage.ObjectInfo]]:
    """Frame indices to process and the input files they and the scan need."""
    scans = storage.list_files(storage.join(raw_root, layout.scene_scan_dir(scene)))
    two_d = storage.list_files(storage.join(raw_root, layout.scene_2d_dir(scene)))
    indices = sorted({int(o.rel[6:-4]) for o in two_d if o.rel.startswith("color/") and o.rel[6:-4].isdigit()
                      and o.rel.endswith(".jpg")})
    indices = [i for i in indices if i % stride == 0]
    want = {layout.frame_keys(scene, i)[k].split("/", 2)[2] for i in indices for k in _FRAME_KINDS}
    return indices, scans + [o for o in two_d if o.rel in want]


def _fingerprint(params: CreateDataParams, inputs: list[storage.ObjectInfo], labels: storage.ObjectInfo) -> str:
    doc = {"recipe": RECIPE_VERSION, "schema": processed.SCHEMA_VERSION, "params": params.fingerprint_dict(),
           "labels": labels.etag, "inputs": sorted((o.rel, o.size, o.etag) for o in inputs)}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def _stage_scene(raw_root: str, scene: str, inputs: list[storage.ObjectInfo], tmp: str) -> str:
    """Local folder holding the scene's raw files: the root itself when local, else a staged copy."""
    if not storage.is_s3(raw_root):
        return raw_root
    prefix = storage.normalise(raw_root).rstrip("/") + "/"
    pairs = [(o.uri, os.path.join(tmp, *o.uri[len(prefix):].split("/"))) for o in inputs]
    storage.copy_files(pairs, workers=8, desc=f"stage {scene}")
    return tmp


def _run_one(raw_root: str, out_root: str, scene: str, params: dict, indices: list[int],
             inputs: list[storage.ObjectInfo], label_map: dict, fingerprint: str) -> SceneResult:
    tmp = tempfile.mkdtemp(prefix=f"oseg3d-raw-{scene}-")
    try:
        local = _stage_scene(raw_root, scene, inputs, tmp)
        return process_scene(local, out_root, scene, params, indices, label_map, fingerprint)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def create_data(raw_root: str, out_root: str, params: CreateDataParams, workers: int = 1,
                scenes: list[str] | None = None) -> dict:
    """Build a processed dataset.

    Args:
        raw_root: raw ScanNet layout root (local path or s3://bucket/prefix).
        out_root: dataset root to write (local path or s3://...).
        params: recipe parameters (kind, points per frame, superpoint generator, ...).
        workers: scene-parallel worker processes.
        scenes: restrict to these scene ids (default: all scenes of the split lists).
    Returns:
        The report (also written as report.json / report.md under out_root).
    """
    t0 = time.time()
    try:
        kind = params.dataset_kind
    except ValueError as e:  # a typo in a pipeline parameter: say which values exist, not a bare ValueError
        raise ConfigError(f"kind={params.kind}", str(e), "pass one of scannet_sv, scannet_mv, scannet200_sv, "
                          "scannet200_mv") from None
    splits = read_split_lists(raw_root)
    tsv_uri = storage.join(raw_root, layout.LABEL_TSV)
    if not storage.exists(tsv_uri):
        raise DataError(tsv_uri, "label table is missing", "copy scannetv2-labels.combined.tsv from ScanNet into the data root")
    with tempfile.TemporaryDirectory() as tmp:
        storage.get_file(tsv_uri, os.path.join(tmp, layout.LABEL_TSV))
        label_map = read_label_tsv(os.path.join(tmp, layout.LABEL_TSV)).lookup(kind)
    labels_info = storage.stat(tsv_uri)

    seen, duplicates, order = set(), [], []
    for split in ("train", "val"):
        for s in splits[split]:
            if s in seen:
                duplicates.append(s)
            elif scenes is None or s in scenes:
                seen.add(s)
                order.append((split, s))
    missing, todo, done = [], [], {}
    for split, scene in tqdm(order, desc="plan scenes", unit="scene", leave=False):
        indices, inputs = _scene_inputs(raw_root, scene, params.stride)
        if not any(o.rel.endswith("_vh_clean_2.ply") for o in inputs):
            missing.append(scene)
            continue
        fp = _fingerprint(params, inputs, labels_info)
        marker_uri = storage.join(out_root, processed.marker_key(scene))
        if storage.exists(marker_uri):
            reused = _reuse_marker(marker_uri, fp)
            if reused is not None:
                done[scene] = reused
                continue
        todo.append((scene, indices, inputs, fp))

    results: dict[str, SceneResult] = dict(done)
    pbar = tqdm(total=sum(len(t[1]) for t in todo), desc=f"create_data {kind.name}", unit="frame")
    if workers > 1:  # one core per worker: keep OpenMP (pykdtree) from oversubscribing
        os.environ.setdefault("OMP_NUM_THREADS", "1")
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) if workers > 1 else None
    try:
        args = [(raw_root, out_root, s, asdict(params), idx, inp, label_map, fp) for s, idx, inp, fp in todo]
        futs = [pool.submit(_run_one, *a) for a in args] if pool else None
        for res in (f.result() for f in as_completed(futs)) if pool else (_run_one(*a) for a in args):
            results[res.scene] = res
            pbar.update(res.kept + sum(res.skipped.values()))
    finally:
        pbar.close()
        if pool:
            pool.shutdown(cancel_futures=True)

    for split in ("train", "val"):
        # from `order`, not the split lists: a duplicated id must not repeat its rows, nor leak into both splits
        rows = [r for sp, s in order if sp == split and s in results and results[s].error is None
                for r in results[s].rows]
        processed.write_manifest(storage.join(out_root, processed.manifest_key(split)), rows, kind.mode, kind.name, split)
    meta = {"kind": kind.name, "schema_version": processed.SCHEMA_VERSION, "recipe": RECIPE_VERSION,
            "raw_root": raw_root, "params": asdict(params)}
    storage.write_json(storage.join(out_root, "dataset.json"), meta)
    report = write_report(out_root, kind.name, results, splits, missing, duplicates,
                          skipped_by_marker=len(done), elapsed=time.time() - t0)
    if report["frames"]["kept"] == 0:
        # Training on an empty dataset would "succeed" with zero steps; stop here, after writing the report
        # that lists every skipped frame, failed and absent scene.
        raise DataError(storage.join(out_root, "report.md"), f"no usable frame: {len(results)} scenes processed "
                        f"({len(report['scenes']['failed'])} failed), {len(missing)} listed scenes absent, frames "
                        f"skipped {report['frames']['skipped'] or 'none'}", "repair or add the raw files the "
                        "report names (or check --raw / the scene filter), then rerun create_data")
    return report


def _reuse_marker(uri: str, fingerprint: str) -> SceneResult | None:
    """The finished scene's result if its marker matches `fingerprint`; None means "redo the scene".

    A marker that cannot be read (damaged by another tool, or written by an older version with other
    fields) is treated like a missing one: the scene is redone and the marker rewritten, instead of the
    whole run stopping on it.
    """
    try:
        marker = storage.read_json(uri)
        if not isinstance(marker, dict) or marker.get("fingerprint") != fingerprint:
            return None
        marker.pop("fingerprint")
        return SceneResult(**marker)
    except (StorageError, TypeError) as e:
        log.warning("%s: unreadable scene marker, redoing the scene (%s)", uri, e)
        return None
