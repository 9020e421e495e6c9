"""Process one scene for create_data: read its raw files, turn the selected frames into points, write.

Runs in a worker process. Inputs come from a local folder (the raw root itself, or a staging copy of
the scene's files when the raw root is on S3); outputs go through the storage layer, each file atomic,
and the scene's completion marker last, so a killed worker leaves the scene to be redone, never half
done under a final name.
"""
from __future__ import annotations

import json
import os
import tempfile
import zlib
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import save_file

from oseg3d import storage
from oseg3d.data import processed
from oseg3d.data.frame_points import SceneGT, frame_to_points
from oseg3d.data.superpoints import build_mask_generator
from oseg3d.errors import DataError, StorageError
from oseg3d.scannet import layout
from oseg3d.scannet.annotations import apply_transform, build_mesh_gt, read_aggregation, read_axis_align, read_segments
from oseg3d.scannet.frames import FrameSkip, read_frame
from oseg3d.scannet.labels import DatasetKind, parse_kind
from oseg3d.scannet.ply import read_ply

__all__ = ["CreateDataParams", "SceneResult", "process_scene", "load_scene_gt"]


@dataclass
class CreateDataParams:
    """Everything that changes create_data's output (part of every scene's fingerprint).

    Attributes:
        kind: scannet_sv | scannet_mv | scannet200_sv | scannet200_mv.
        num_points: points per frame (ESAM: 20,000).
        superpoints: graph (weights-free) | sam | fastsam.
        sam_checkpoint: checkpoint file for sam / fastsam.
        kmeans_k: clusters for unpainted points; None = ESAM's (SV 10, MV 8; FastSAM 20).
        frame_stride: raw-frame step; None = ESAM's (SV 200, MV 40).
        seed: sampling seed (each frame derives its own generator from it).
        intrinsics: depth intrinsics (fx, fy, cx, cy).
    """

    kind: str
    num_points: int = 20000
    superpoints: str = "graph"
    sam_checkpoint: str | None = None
    kmeans_k: int | None = None
    frame_stride: int | None = None
    seed: int = 0
    intrinsics: tuple[float, float, float, float] = (577.870605, 577.870605, 319.5, 239.5)

    @property
    def dataset_kind(self) -> DatasetKind:
        return parse_kind(self.kind)

    @property
    def stride(self) -> int:
        return self.frame_stride or (200 if self.dataset_kind.mode == "sv" else 40)

    @property
    def k(self) -> int:
        if self.kmeans_k:
            return self.kmeans_k
        if self.superpoints == "fastsam":
            return 20
        return 10 if self.dataset_kind.mode == "sv" else 8

    def fingerprint_dict(self) -> dict:
        d = asdict(self)
        d.pop("sam_checkpoint")  # the path may move; the generator name is what matters
        return d


@dataclass
class SceneResult:
    """What a worker reports back: manifest rows, frame counts, problems."""

    scene: str
    rows: list[dict] = field(default_factory=list)
    kept: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    skipped_frames: list[str] = field(default_factory=list)
    unknown_labels: list[str] = field(default_factory=list)
    error: str | None = None


def load_scene_gt(raw: Path, scene: str, label_map: dict[str, int]):
    """Mesh, per-vertex GT and the labelling structure of one scan (local raw root)."""
    mesh = read_ply(raw / layout.mesh_key(scene))
    align = read_axis_align(raw / layout.scene_info_key(scene))
    seg = read_segments(raw / layout.segs_key(scene), len(mesh.vertices))
    agg = next((raw / k for k in layout.aggregation_keys(scene) if (raw / k).is_file()), raw / layout.aggregation_keys(scene)[0])
    aligned = apply_transform(align, mesh.vertices)
    gt = build_mesh_gt(aligned, seg, read_aggregation(agg), label_map)
    return mesh, align, gt, SceneGT.from_mesh(aligned, gt, align)


def _frame_rng(seed: int, scene: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(scene.encode()), index])


def _put_arrays(arrays: dict, uri: str, metadata: dict, tmpdir: str) -> None:
    tmp = Path(tmpdir) / Path(uri).name
    try:
        save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(tmp), metadata=metadata)
    except (OSError, SafetensorError) as e:
        # a full scratch disk: safetensors reports the OSError (ENOSPC, EFBIG) as its own error type
        raise StorageError(str(tmp), f"could not write the scratch copy ({e})", f"free disk space on the volume "
                           f"holding {tmpdir} (or set TMPDIR to a larger one), then rerun create_data") from None
    os.chmod(tmp, 0o644)  # safetensors creates 0600 files; datasets are shared read-only
    storage.put_file(str(tmp), uri, move=True)


def _rows(scene: str, p: CreateDataParams, frames: list[dict], align: np.ndarray) -> list[dict]:
    mat = lambda m: [float(x) for x in np.asarray(m).reshape(-1)]  # noqa: E731
    img = lambda i: layout.frame_keys(scene, i)["color"]  # noqa: E731
    if not frames:
        return []
    if p.dataset_kind.mode == "mv":
        return [{
            "scene_id": scene, "data_path": processed.frames_key(scene), "mesh_path": processed.mesh_key(scene),
            "num_frames": len(frames), "num_points": p.num_points,
            "frame_indices": [f["index"] for f in frames], "poses": [mat(f["pose"]) for f in frames],
            "axis_align_matrix": mat(align), "img_paths": [img(f["index"]) for f in frames], "clip_feat_paths": None,
        }]
    return [{
        "sample_id": f"{scene}_{f['index']}", "scene_id": scene, "frame_index": f["index"],
        "data_path": processed.frames_key(scene), "row": r, "num_points": p.num_points,
        "num_superpoints": f["num_sp"], "pose": mat(f["pose"]), "pose_centered": mat(f["pose_centered"]),
        "axis_align_matrix": mat(align), "img_path": img(f["index"]),
        "depth_path": layout.frame_keys(scene, f["index"])["depth"], "clip_feat_path": None,
    } for r, f in enumerate(frames)]


def process_scene(raw_local: str, out_root: str, scene: str, params: dict, frame_indices: list[int],
                  label_map: dict[str, int], fingerprint: str) -> SceneResult:
    """Create the processed data of one scene and its completion marker.

    Args:
        raw_local: local folder with the raw layout (at least this scene's files).
        out_root: dataset root URI (local or s3://).
        scene: scene id.
        params: CreateDataParams as a dict (picklable across processes).
        frame_indices: raw frame indices to process (already filtered by stride).
        label_map: raw label → raw semantic id of the benchmark.
        fingerprint: written into the marker; a rerun with the same fingerprint skips the scene.
    """
    p = CreateDataParams(**params)
    res = SceneResult(scene)
    raw = Path(raw_local)
    try:
        mesh, align, gt, sgt = load_scene_gt(raw, scene, label_map)
    except DataError as e:
        res.error = str(e)
        return res
    res.unknown_labels = gt.unknown_labels
    masks = build_mask_generator(p.superpoints, p.sam_checkpoint)
    center = p.dataset_kind.mode == "sv"
    cols: dict[str, list] = {k: [] for k in ("points", "instance", "semantic", "superpoint")}
    frames, skipped = [], Counter()
    for idx in frame_indices:
        try:
            fr = read_frame(raw / layout.scene_2d_dir(scene), idx)
            fp = frame_to_points(fr, sgt, masks, _frame_rng(p.seed, scene, idx), num_points=p.num_points,
                                 kmeans_k=p.k, center=center, intrinsics=p.intrinsics)
        except FrameSkip as e:
            skipped[e.reason] += 1
            res.skipped_frames.append(f"{scene}/{idx}: {e.reason}")
            continue
        for k in cols:
            cols[k].append(getattr(fp, k))
        pc = fr.pose.copy()
        pc[:3, 3] -= fp.center
        frames.append({"index": idx, "pose": fr.pose, "pose_centered": pc, "center": fp.center,
                       "num_sp": int(fp.superpoint.max()) + 1})
    res.kept, res.skipped = len(frames), dict(skipped)
    # one metadata key: safetensors stores metadata in a hash map, so several keys come out in a
    # per-process order and identical runs would not give identical bytes
    meta = {"oseg3d": json.dumps({"schema_version": processed.SCHEMA_VERSION, "scene": scene, "kind": p.kind},
                                 sort_keys=True)}
    with tempfile.TemporaryDirectory(prefix="oseg3d-scene-") as tmp:
        if frames:
            arrays = {k: np.stack(v) for k, v in cols.items()}
            arrays["frame_index"] = np.array([f["index"] for f in frames], np.int32)
            arrays["pose"] = np.stack([f["pose"] for f in frames]).astype(np.float32)
            if center:
                arrays["pose_centered"] = np.stack([f["pose_centered"] for f in frames]).astype(np.float32)
                arrays["center"] = np.stack([f["center"] for f in frames]).astype(np.float32)
            _put_arrays(arrays, storage.join(out_root, processed.frames_key(scene)), meta, tmp)
        if frames and not center:
            verts = np.concatenate([mesh.vertices, mesh.colors.astype(np.float32)], 1)
            _put_arrays({"vertices": verts, "instance": gt.instance, "semantic": gt.semantic, "segment": gt.segment,
                         "axis_align_matrix": align.astype(np.float32)},
                        storage.join(out_root, processed.mesh_key(scene)), meta, tmp)
    res.rows = _rows(scene, p, frames, align)
    marker = {"fingerprint": fingerprint, **asdict(res)}
    storage.write_json(storage.join(out_root, processed.marker_key(scene)), marker)
    return res
