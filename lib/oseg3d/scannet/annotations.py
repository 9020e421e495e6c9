"""Mesh annotations of one ScanNet scan: segments, object groups, axis alignment → per-vertex GT.

Follows ScanNet's own export (BenchmarkScripts / mmdet3d `batch_load_scannet_data`): instance id =
`objectId + 1` (0 = unannotated), a vertex gets the instance of the segment group that contains its
segment (later groups win on overlap), the semantic id comes from the group's raw label through the
label TSV. Boxes are axis-aligned, computed on axis-aligned vertices.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from oseg3d.errors import DataError

__all__ = ["MeshGT", "read_axis_align", "read_segments", "read_aggregation", "build_mesh_gt", "apply_transform"]


@dataclass
class MeshGT:
    """Per-vertex ground truth of one scan.

    Attributes:
        instance: (N,) int32, objectId + 1, 0 = unannotated.
        semantic: (N,) int32 raw semantic id of the benchmark (nyu40 or ScanNet200 `id`), 0 = none.
        segment: (N,) int64 official mesh segment id (`segIndices`).
        boxes: {instance id: (6,) float32 aligned box min xyz, max xyz}.
        unknown_labels: raw labels missing from the TSV (their vertices get semantic 0).
    """

    instance: np.ndarray
    semantic: np.ndarray
    segment: np.ndarray
    boxes: dict[int, np.ndarray]
    unknown_labels: list[str] = field(default_factory=list)


def _load_json(path: Path, what: str) -> dict:
    if not path.is_file():
        raise DataError(path, f"{what} is missing", "check the scan folder against ScanNet's layout (DESIGN §4)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(path, f"{what} is not valid JSON ({e.__class__.__name__}: {e})", "re-download the file") from None


def read_axis_align(path: str | Path) -> np.ndarray:
    """The 4×4 `axisAlignment` of `<scene>.txt`; identity when the key is absent (ScanNet test scans)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "scene meta file is missing", "copy <scene>.txt from the ScanNet scan folder")
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "axisAlignment":
            try:
                m = np.array([float(x) for x in value.split()], np.float64)
            except ValueError:
                m = np.zeros(0)
            if m.size != 16 or not np.isfinite(m).all():
                raise DataError(path, "axisAlignment is not 16 finite numbers", "restore the file from ScanNet")
            return m.reshape(4, 4)
    return np.eye(4)


def read_segments(path: str | Path, num_vertices: int) -> np.ndarray:
    """`segIndices` of a `.segs.json`, checked against the mesh's vertex count."""
    path = Path(path)
    data = _load_json(path, "segments file")
    try:
        seg = np.asarray(data.get("segIndices", []) if isinstance(data, dict) else None, np.int64)
    except (TypeError, ValueError):
        raise DataError(path, "segIndices is not a list of integers", "restore the file from ScanNet") from None
    if seg.shape != (num_vertices,):
        raise DataError(path, f"{seg.size} segIndices for a mesh of {num_vertices} vertices", "use the segs.json of this mesh (_vh_clean_2.0.010000)")
    return seg


def read_aggregation(path: str | Path) -> list[tuple[int, str, list[int]]]:
    """(objectId, raw label, segment ids) of every segGroup."""
    path = Path(path)
    data = _load_json(path, "aggregation file")
    try:
        return [(int(g["objectId"]), str(g["label"]), [int(s) for s in g["segments"]]) for g in data["segGroups"]]
    except (KeyError, TypeError, ValueError) as e:
        raise DataError(path, f"malformed segGroups ({e})", "restore the file from ScanNet") from None


def apply_transform(m: np.ndarray, xyz: np.ndarray) -> np.ndarray:
    """Apply a 4×4 rigid transform to (N, 3) points (float32 out)."""
    return (xyz @ m[:3, :3].T.astype(np.float32) + m[:3, 3].astype(np.float32)).astype(np.float32)


def build_mesh_gt(
    vertices_aligned: np.ndarray,
    segment: np.ndarray,
    groups: list[tuple[int, str, list[int]]],
    label_map: dict[str, int],
) -> MeshGT:
    """Per-vertex instance / semantic ids and aligned instance boxes.

    Args:
        vertices_aligned: (N, 3) axis-aligned vertices (boxes are computed on these).
        segment: (N,) segment id per vertex.
        groups: output of `read_aggregation`.
        label_map: raw label → raw semantic id of the benchmark.
    """
    n = len(segment)
    instance = np.zeros(n, np.int32)
    semantic = np.zeros(n, np.int32)
    order = np.argsort(segment, kind="stable")
    seg_sorted = segment[order]
    unknown = []
    for object_id, label, segs in groups:
        segs = np.asarray(segs, np.int64)
        lo, hi = np.searchsorted(seg_sorted, segs, "left"), np.searchsorted(seg_sorted, segs, "right")
        verts = np.concatenate([order[a:b] for a, b in zip(lo, hi)]) if len(segs) else np.zeros(0, np.int64)
        instance[verts] = object_id + 1
        sem = label_map.get(label)
        if sem is None:
            unknown.append(label)
            sem = 0
        semantic[verts] = sem
    boxes = {}
    for inst in np.unique(instance):
        if inst == 0:
            continue
        pts = vertices_aligned[instance == inst]
        boxes[int(inst)] = np.concatenate([pts.min(0), pts.max(0)]).astype(np.float32)
    return MeshGT(instance, semantic, segment, boxes, sorted(set(unknown)))
