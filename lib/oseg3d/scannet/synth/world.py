"""Write a synthetic world: N furnished rooms in ScanNet v2's raw layout plus the 2D export.

Each scene is generated from `(seed, scene index)` alone, so worlds are deterministic and scenes can be
written in parallel. A scene is written into a temporary folder and renamed into place, so an
interrupted run never leaves a half-written scene under its final name; a rerun skips finished scenes.
Defects that real scans have (NaN/inf poses, corrupt images, missing files, empty depth, unknown
labels, a listed-but-absent scene) can be injected and are recorded in `synth_world.json`.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from oseg3d.scannet import layout
from oseg3d.scannet.frames import DEPTH_INTRINSICS
from oseg3d.scannet.ply import Mesh, write_ply
from oseg3d.scannet.synth.mesh import tessellate
from oseg3d.scannet.synth.render import camera_trajectory, render_frame
from oseg3d.scannet.synth.room import generate_room
from oseg3d.scannet.synth.visibility import crop_to_observed, observed_vertices

__all__ = ["SynthSpec", "DEFECT_KINDS", "write_world", "scene_name", "axis_alignment"]

DEFECT_KINDS = ("nan_pose", "inf_pose", "corrupt_png", "corrupt_jpg", "missing_frame", "zero_depth",
                "size_mismatch", "unknown_label", "missing_scene")


@dataclass
class SynthSpec:
    """Size knobs and defects of a synthetic world.

    Attributes:
        scenes: number of scenes.
        frames: exported frames per scene (raw indices 0, 20, ..., 20·(frames−1)); ScanNet averages ~80.
        mesh_resolution: triangle grid spacing in metres (ScanNet meshes are ~2-5 cm).
        val_fraction: share of scenes in the val split (at least one each when scenes ≥ 2).
        seed: world seed.
        defects: kind → how many to inject (see DEFECT_KINDS).
    """

    scenes: int = 3
    frames: int = 41
    mesh_resolution: float = 0.05
    val_fraction: float = 0.34
    seed: int = 0
    defects: dict[str, int] = field(default_factory=dict)


def scene_name(i: int) -> str:
    return f"scene{i:04d}_00"


def axis_alignment(rng: np.random.Generator) -> np.ndarray:
    """A ScanNet-like alignment (rotation about z + translation); the raw scan = inv(A) · aligned room."""
    a = rng.uniform(-np.pi, np.pi)
    m = np.eye(4)
    m[:2, :2] = [[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]
    m[:3, 3] = [rng.uniform(-4, 4), rng.uniform(-4, 4), rng.uniform(-0.1, 0.1)]
    return m


def _scene_meta(align: np.ndarray, frames: int) -> str:
    fx, fy, cx, cy = DEPTH_INTRINSICS
    return "\n".join([
        "axisAlignment = " + " ".join(f"{v:.6f}" for v in align.reshape(-1)),
        "colorHeight = 480", "colorWidth = 640", "depthHeight = 480", "depthWidth = 640",
        f"fx_depth = {fx}", f"fy_depth = {fy}", f"mx_depth = {cx}", f"my_depth = {cy}",
        f"numColorFrames = {frames * 20}", f"numDepthFrames = {frames * 20}", "sceneType = Living room / Lounge",
    ]) + "\n"


def _write_scene(root: str, index: int, spec: SynthSpec, unknown_label: bool, defects: list[dict]) -> str:
    name = scene_name(index)
    rng = np.random.default_rng([spec.seed, index])
    room = generate_room(rng)
    align = axis_alignment(rng)
    unalign = np.linalg.inv(align)
    am = tessellate(room, spec.mesh_resolution)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{name}-", dir=root))
    scan, two_d = tmp / "scans" / name, tmp / "2D" / name
    for sub in ("color", "depth", "pose"):
        (two_d / sub).mkdir(parents=True)
    scan.mkdir(parents=True)
    poses = camera_trajectory(room, spec.frames, rng)
    depths = []
    for k, pose in enumerate(poses):
        color, depth = render_frame(room, pose, DEPTH_INTRINSICS, rng)
        depths.append(depth)
        Image.fromarray(color).save(two_d / "color" / f"{20 * k}.jpg", quality=92)
        Image.fromarray(depth).save(two_d / "depth" / f"{20 * k}.png", compress_level=1)
        np.savetxt(two_d / "pose" / f"{20 * k}.txt", unalign @ pose, fmt="%.6f")
    # the mesh a reconstruction from these frames would hold: only what some frame observed
    am = crop_to_observed(am, observed_vertices(am.mesh.vertices, poses, depths, DEPTH_INTRINSICS))
    if unknown_label:  # a raw label missing from the TSV, on the last furniture object that was observed
        k = max(i for i, g in enumerate(am.groups) if g[1] not in ("wall", "floor", "ceiling"))
        am.groups[k] = (am.groups[k][0], "glorp", am.groups[k][2])
    verts = am.mesh.vertices @ unalign[:3, :3].T.astype(np.float32) + unalign[:3, 3].astype(np.float32)
    write_ply(scan / f"{name}_vh_clean_2.ply", Mesh(verts.astype(np.float32), am.mesh.colors, am.mesh.faces))
    (scan / f"{name}_vh_clean_2.0.010000.segs.json").write_text(json.dumps(
        {"params": {"kThresh": "0.0001", "segMinVerts": "20", "minPoints": "750", "maxPoints": "30000",
                    "thinThresh": "0.05", "flatThresh": "0.001", "minLength": "0.02", "maxLength": "1"},
         "sceneId": name, "segIndices": am.segments.tolist()}))
    (scan / f"{name}.aggregation.json").write_text(json.dumps(
        {"sceneId": f"scannet.{name}", "appId": "Aggregator.v2",
         "segGroups": [{"id": oid, "objectId": oid, "segments": segs, "label": label} for oid, label, segs in am.groups],
         "segmentsFile": f"scannet.{name}_vh_clean_2.0.010000.segs.json"}))
    (scan / f"{name}.txt").write_text(_scene_meta(align, spec.frames))
    for d in defects:  # inside the temp folder: a finished scene always carries its defects
        _inject_frame_defect(tmp, name, d["frame"], d["kind"])
    for sub, final in (("scans", Path(root) / "scans" / name), ("2D", Path(root) / "2D" / name)):
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp / sub / name, final)
    shutil.rmtree(tmp)
    return name


def _inject_frame_defect(root: Path, scene: str, index: int, kind: str) -> None:
    keys = {k: root / v for k, v in layout.frame_keys(scene, index).items()}
    if kind in ("nan_pose", "inf_pose"):
        lines = keys["pose"].read_text().splitlines()
        lines[1] = " ".join(["nan" if kind == "nan_pose" else "-inf"] * 4)
        keys["pose"].write_text("\n".join(lines) + "\n")
    elif kind == "corrupt_png":
        keys["depth"].write_bytes(keys["depth"].read_bytes()[:200])
    elif kind == "corrupt_jpg":
        keys["color"].write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    elif kind == "missing_frame":
        keys["depth"].unlink()
    elif kind == "zero_depth":
        Image.fromarray(np.zeros((480, 640), np.uint16)).save(keys["depth"])
    elif kind == "size_mismatch":
        Image.fromarray(np.full((240, 320), 1500, np.uint16)).save(keys["depth"])


def _plan_defects(spec: SynthSpec, names: list[str]) -> list[dict]:
    rng = np.random.default_rng([spec.seed, 7919])
    used_frames = [20 * k for k in range(spec.frames) if (20 * k) % 200 == 0]  # hit by both SV and MV
    free = [(s, f) for s in names for f in used_frames]
    plan = []
    for kind in DEFECT_KINDS:
        for _ in range(spec.defects.get(kind, 0)):
            if kind == "missing_scene":
                plan.append({"kind": kind, "scene": scene_name(spec.scenes + len(plan))})
            elif kind == "unknown_label":
                plan.append({"kind": kind, "scene": names[int(rng.integers(len(names)))]})
            else:
                if not free:
                    raise ValueError(f"not enough frames for {kind}: make the world larger (frames ≥ 200·defects/20)")
                scene, frame = free.pop(int(rng.integers(len(free))))
                plan.append({"kind": kind, "scene": scene, "frame": int(frame)})
    unknown = [d for d in spec.defects if d not in DEFECT_KINDS]
    if unknown:
        raise ValueError(f"unknown defect kinds {unknown}; choose from {', '.join(DEFECT_KINDS)}")
    return plan


def write_world(root: str | Path, spec: SynthSpec, workers: int = 1) -> dict:
    """Write (or complete) a synthetic world under the local folder `root`.

    Returns:
        The world description written to `synth_world.json` (spec, scenes, splits, defects).
    """
    root = Path(root)
    (root / "scans").mkdir(parents=True, exist_ok=True)
    (root / "2D").mkdir(exist_ok=True)
    names = [scene_name(i) for i in range(spec.scenes)]
    plan = _plan_defects(spec, names)
    desc_path = root / "synth_world.json"
    desc = {"spec": asdict(spec), "scenes": names, "defects": plan}
    if desc_path.is_file():
        stored = json.loads(desc_path.read_text())
        if {k: stored.get(k) for k in desc} == desc:
            return stored  # complete already
        desc_path.unlink()  # another world: every scene is rewritten
        todo = list(range(spec.scenes))
    else:  # first run, or resuming an interrupted one: finished scenes are kept
        todo = [i for i in range(spec.scenes)
                if not ((root / "scans" / names[i]).is_dir() and (root / "2D" / names[i]).is_dir())]
    unknown_scenes = {d["scene"] for d in plan if d["kind"] == "unknown_label"}
    with ProcessPoolExecutor(max(1, workers)) if workers > 1 else _Inline() as pool:
        futs = [pool.submit(_write_scene, str(root), i, spec, names[i] in unknown_scenes,
                            [d for d in plan if d.get("scene") == names[i] and "frame" in d]) for i in todo]
        for f in tqdm(futs, desc="synth scenes", unit="scene"):
            f.result()
    n_val = 0 if spec.scenes < 2 else max(1, int(round(spec.val_fraction * spec.scenes)))
    splits = {"train": names[: spec.scenes - n_val], "val": names[spec.scenes - n_val:]}
    splits["val"] += [d["scene"] for d in plan if d["kind"] == "missing_scene"]
    for split, members in splits.items():
        (root / f"scannetv2_{split}.txt").write_text("".join(f"{s}\n" for s in members))
    shutil.copyfile(resources.files("oseg3d.resources").joinpath("synth_labels.tsv"), root / layout.LABEL_TSV)
    desc["splits"] = splits
    tmp = desc_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(desc, indent=2))
    os.replace(tmp, desc_path)  # written last: its presence means the world is complete
    return desc


class _Inline:
    """A synchronous stand-in for an executor (workers=1 keeps tracebacks simple)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def submit(self, fn, *args):
        from concurrent.futures import Future

        fut = Future()
        try:
            fut.set_result(fn(*args))
        except BaseException as e:  # noqa: BLE001 - surfaced by result()
            fut.set_exception(e)
        return fut
