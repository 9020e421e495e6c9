"""The processed-dataset format written by create_data and read by training and evaluation.

Few large objects, no pickle, typed schema with a version (DESIGN §4):

    <root>/dataset.json                    kind, schema version, raw root, parameters
    <root>/frames/<scene>.safetensors      all kept frames of a scene, stacked (see FRAME_KEYS)
    <root>/mesh/<scene>.safetensors        MV only: mesh vertices + GT for online evaluation
    <root>/manifest_{train,val}.parquet    one row per SV frame / per MV scene
    <root>/report.json, report.md          frames kept / skipped by reason
    <root>/_scenes/<scene>.json            per-scene completion marker (fingerprint + manifest rows)
    <root>/clip_feat/<scene>/color/<N>.safetensors   precompute_clip: per-frame CLIP conv1 features
    <root>/clip_feat/report.json           precompute_clip's summary (clip source, counts)

Manifest schema versions: 1 (create_data) leaves `clip_feat_path(s)` empty; 2 (precompute_clip
`--pack-clip`, seed plan §7.8) fills them with feature paths relative to the dataset root. Without them
the loader derives the same path from the image path (`clip_feat_key`).

safetensors gives named, typed arrays with a JSON header and zero-copy slicing, so one SV frame is read
without loading its scene's other frames.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from safetensors import safe_open
from safetensors.numpy import load as st_load

from oseg3d import storage
from oseg3d.errors import DataError

__all__ = [
    "SCHEMA_VERSION", "PACKED_SCHEMA_VERSION", "READABLE_VERSIONS", "frames_key", "clip_feat_key", "mesh_key",
    "marker_key", "manifest_key", "sv_schema", "mv_schema",
    "write_manifest", "read_manifest", "manifest_version", "manifest_keys", "read_arrays", "read_frame_slice",
]

SCHEMA_VERSION = 1  # what create_data writes (also in frames files and scene fingerprints)
PACKED_SCHEMA_VERSION = 2  # manifests with clip_feat_path(s) filled in
READABLE_VERSIONS = (SCHEMA_VERSION, PACKED_SCHEMA_VERSION)
# frames/<scene>.safetensors: points f32 (F,P,6) xyz+rgb, instance/semantic/superpoint i32 (F,P),
# frame_index i32 (F,), pose f32 (F,4,4) camera-to-world; SV adds pose_centered (F,4,4), center (F,3).
FRAME_KEYS = ("points", "instance", "semantic", "superpoint", "frame_index", "pose")


def frames_key(scene: str) -> str:
    return f"frames/{scene}.safetensors"


def mesh_key(scene: str) -> str:
    return f"mesh/{scene}.safetensors"


def marker_key(scene: str) -> str:
    return f"_scenes/{scene}.json"


def manifest_key(split: str) -> str:
    return f"manifest_{split}.parquet"


def manifest_keys(root: str) -> list[str]:
    """The manifests present under dataset `root` (train, val, any other split), sorted."""
    return [o.rel for o in storage.list_files(root, recursive=False)
            if o.rel.startswith("manifest_") and o.rel.endswith(".parquet")]


def clip_feat_key(img_path: str) -> str:
    """CLIP feature file of an image, relative to the dataset root.

    `2D/<scene>/color/7.jpg` → `clip_feat/<scene>/color/7.safetensors` (seed plan §7.2, with safetensors).
    """
    stem = img_path[len("2D/"):] if img_path.startswith("2D/") else img_path
    return "clip_feat/" + stem.rsplit(".", 1)[0] + ".safetensors"


_MAT = pa.list_(pa.float64(), 16)


def sv_schema() -> pa.Schema:
    """One row per single-view frame."""
    return pa.schema([
        ("sample_id", pa.string()), ("scene_id", pa.string()), ("frame_index", pa.int32()),
        ("data_path", pa.string()), ("row", pa.int32()), ("num_points", pa.int32()),
        ("num_superpoints", pa.int32()), ("pose", _MAT), ("pose_centered", _MAT), ("axis_align_matrix", _MAT),
        ("img_path", pa.string()), ("depth_path", pa.string()), ("clip_feat_path", pa.string()),
    ])


def mv_schema() -> pa.Schema:
    """One row per multi-view scene (frames in raw-index order)."""
    return pa.schema([
        ("scene_id", pa.string()), ("data_path", pa.string()), ("mesh_path", pa.string()),
        ("num_frames", pa.int32()), ("num_points", pa.int32()), ("frame_indices", pa.list_(pa.int32())),
        ("poses", pa.list_(_MAT)), ("axis_align_matrix", _MAT), ("img_paths", pa.list_(pa.string())),
        ("clip_feat_paths", pa.list_(pa.string())),
    ])


def write_manifest(uri: str, rows: list[dict], mode: str, kind: str, split: str,
                   version: int = SCHEMA_VERSION) -> None:
    """Write a manifest atomically, with the schema version (1, or 2 when packed) in the Parquet metadata."""
    if version not in READABLE_VERSIONS:
        raise ValueError(f"manifest schema version {version} is not one of {READABLE_VERSIONS}")
    schema = sv_schema() if mode == "sv" else mv_schema()
    meta = {"oseg3d.schema_version": str(version), "oseg3d.kind": kind, "oseg3d.split": split}
    table = pa.Table.from_pylist(rows, schema=schema.with_metadata(meta))
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    storage.write_bytes(uri, sink.getvalue().to_pybytes())


def read_manifest(uri: str) -> pa.Table:
    """Read a manifest, checking its schema version (DataError with the fix otherwise)."""
    try:
        table = pq.read_table(pa.BufferReader(storage.read_bytes(uri)))
    except (pa.ArrowInvalid, OSError) as e:
        raise DataError(uri, f"not a readable Parquet manifest ({e})", "rerun create_data for this dataset") from None
    version = (table.schema.metadata or {}).get(b"oseg3d.schema_version")
    if version not in {str(v).encode() for v in READABLE_VERSIONS}:
        raise DataError(uri, f"manifest schema version {version!r}, this code reads {list(READABLE_VERSIONS)}",
                        "rerun create_data with this version")
    return table


def manifest_version(table: pa.Table) -> int:
    """Schema version of a manifest read by `read_manifest`."""
    return int(table.schema.metadata[b"oseg3d.schema_version"])


def read_arrays(uri: str) -> dict[str, np.ndarray]:
    """All arrays of a safetensors object (local path or s3://)."""
    try:
        return st_load(storage.read_bytes(uri))
    except Exception as e:  # safetensors raises its own SafetensorError / ValueError on a bad header
        if isinstance(e, DataError):
            raise
        raise DataError(uri, f"unreadable safetensors file ({e})", "rerun the step that wrote it") from None


def read_frame_slice(path: str, row: int, keys=FRAME_KEYS[:4]) -> dict[str, np.ndarray]:
    """Read frame `row` of a local frames file without loading the others (safetensors slicing)."""
    try:
        with safe_open(path, framework="numpy") as f:
            return {k: f.get_slice(k)[row] for k in keys}
    except Exception as e:
        raise DataError(path, f"unreadable frames file ({e})", "rerun create_data for this scene") from None
