"""The processed-dataset format written by create_data and read by training and evaluation.

Few large objects, no pickle, typed schema with a version (DESIGN §4):

    <root>/dataset.json                    kind, schema version, raw root, parameters
    <root>/frames/<scene>.safetensors      all kept frames of a scene, stacked (see FRAME_KEYS)
    <root>/mesh/<scene>.safetensors        MV only: mesh vertices + GT for online evaluation
    <root>/manifest_{train,val}.parquet    one row per SV frame / per MV scene
    <root>/report.json, report.md          frames kept / skipped by reason
    <root>/_scenes/<scene>.json            per-scene completion marker (fingerprint + manifest rows)

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
    "SCHEMA_VERSION", "frames_key", "mesh_key", "marker_key", "manifest_key", "sv_schema", "mv_schema",
    "write_manifest", "read_manifest", "read_arrays", "read_frame_slice",
]

SCHEMA_VERSION = 1
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


def write_manifest(uri: str, rows: list[dict], mode: str, kind: str, split: str) -> None:
    """Write a manifest atomically, with the schema version in the Parquet metadata."""
    schema = sv_schema() if mode == "sv" else mv_schema()
    meta = {"oseg3d.schema_version": str(SCHEMA_VERSION), "oseg3d.kind": kind, "oseg3d.split": split}
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
    if version != str(SCHEMA_VERSION).encode():
        raise DataError(uri, f"manifest schema version {version!r}, this code reads {SCHEMA_VERSION}", "rerun create_data with this version")
    return table


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
