"""oseg3d.scannet.synth.world: a synthetic world in ScanNet v2's exact raw layout, consistent and deterministic."""
from __future__ import annotations

import json
import shutil
from collections import Counter
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.spatial import cKDTree

from oseg3d.scannet import layout
from oseg3d.scannet.annotations import apply_transform, build_mesh_gt, read_aggregation, read_axis_align, read_segments
from oseg3d.scannet.frames import DEPTH_INTRINSICS, FrameSkip, list_frame_indices, read_depth, read_frame, read_pose
from oseg3d.scannet.labels import read_label_tsv
from oseg3d.scannet.ply import read_ply
from oseg3d.scannet.synth import SynthSpec, write_world
from oseg3d.scannet.synth.world import _plan_defects, scene_name

SPEC = SynthSpec(scenes=2, frames=11, mesh_resolution=0.1, seed=0)
TINY = dict(frames=2, mesh_resolution=0.25)  # for determinism / rerun checks
DEFECTS = {"nan_pose": 1, "corrupt_png": 1, "missing_frame": 1, "zero_depth": 1, "unknown_label": 1, "missing_scene": 1}
STUFF = {"wall", "floor", "ceiling"}
PLY_HEADER_START = (
    b"ply\nformat binary_little_endian 1.0\n"
)
PLY_HEADER_REST = (
    b"element vertex {n}\nproperty float x\nproperty float y\nproperty float z\nproperty uchar red\n"
    b"property uchar green\nproperty uchar blue\nproperty uchar alpha\nelement face {m}\n"
    b"property list uchar int vertex_indices\nend_header\n"
)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    return root, write_world(root, SPEC)


@pytest.fixture(scope="module")
def defect_world(tmp_path_factory):
    root = tmp_path_factory.mktemp("defects")
    # the four frame defects fill all 2 × 2 frames that both SV and MV use
    return root, write_world(root, SynthSpec(scenes=2, frames=11, mesh_resolution=0.1, seed=2, defects=DEFECTS))


def _files(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_ino, p.stat().st_mtime_ns) for p in sorted(root.rglob("*")) if p.is_file()}


def _bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------------------------ layout


def test_world_description(world):
    root, desc = world
    assert desc["scenes"] == ["scene0000_00", "scene0001_00"]
    assert desc["defects"] == []
    assert desc["splits"] == {"train": ["scene0000_00"], "val": ["scene0001_00"]}
    assert json.loads((root / "synth_world.json").read_text()) == desc
    assert (root / "scannetv2_train.txt").read_text() == "scene0000_00\n"
    assert (root / "scannetv2_val.txt").read_text() == "scene0001_00\n"
    assert (root / layout.LABEL_TSV).read_bytes() == resources.files("oseg3d.resources").joinpath("synth_labels.tsv").read_bytes()
    assert not list(root.glob(".tmp-*"))  # no temporary scene folders left behind


@pytest.mark.parametrize("scene", ["scene0000_00", "scene0001_00"])
def test_scene_files_in_scannet_layout(world, scene):
    root, _ = world
    scan = root / "scans" / scene
    assert sorted(p.name for p in scan.iterdir()) == sorted([
        f"{scene}_vh_clean_2.ply", f"{scene}_vh_clean_2.0.010000.segs.json", f"{scene}.aggregation.json", f"{scene}.txt",
    ])
    for key in (layout.mesh_key(scene), layout.segs_key(scene), layout.aggregation_keys(scene)[0], layout.scene_info_key(scene)):
        assert (root / key).is_file(), key

    ply = (root / layout.mesh_key(scene)).read_bytes()
    mesh = read_ply(root / layout.mesh_key(scene))
    assert ply.startswith(PLY_HEADER_START)
    header_end = ply.index(b"end_header\n") + len(b"end_header\n")
    rest = PLY_HEADER_REST.replace(b"{n}", str(len(mesh.vertices)).encode()).replace(b"{m}", str(len(mesh.faces)).encode())
    assert ply[:header_end].endswith(rest)
    assert len(ply) - header_end == 16 * len(mesh.vertices) + 13 * len(mesh.faces)

    segs = json.loads((root / layout.segs_key(scene)).read_text())
    assert set(segs) == {"params", "sceneId", "segIndices"} and segs["sceneId"] == scene
    agg = json.loads((root / layout.aggregation_keys(scene)[0]).read_text())
    assert set(agg) == {"sceneId", "appId", "segGroups", "segmentsFile"}
    assert agg["sceneId"] == f"scannet.{scene}" and agg["appId"] == "Aggregator.v2"
    assert agg["segmentsFile"] == f"scannet.{scene}_vh_clean_2.0.010000.segs.json"
    for g in agg["segGroups"]:
        assert set(g) == {"id", "objectId", "segments", "label"} and g["id"] == g["objectId"]
    assert [g["objectId"] for g in agg["segGroups"]] == list(range(len(agg["segGroups"])))

    info = (root / layout.scene_info_key(scene)).read_text().splitlines()
    assert info[0].startswith("axisAlignment = ") and len(info[0].split("=")[1].split()) == 16
    assert "colorHeight = 480" in info and "depthWidth = 640" in info


@pytest.mark.parametrize("scene", ["scene0000_00", "scene0001_00"])
def test_2d_export(world, scene):
    root, _ = world
    two_d = root / layout.scene_2d_dir(scene)
    expected = list(range(0, 20 * SPEC.frames, 20))
    assert list_frame_indices(two_d) == expected
    for sub, ext in (("color", "jpg"), ("depth", "png"), ("pose", "txt")):
        assert sorted(p.name for p in (two_d / sub).iterdir()) == sorted(f"{n}.{ext}" for n in expected)
    for n in (0, 100, 200):
        keys = {k: root / v for k, v in layout.frame_keys(scene, n).items()}
        with Image.open(keys["color"]) as im:
            assert (im.format, im.size, im.mode) == ("JPEG", (640, 480), "RGB")
        with Image.open(keys["depth"]) as im:
            assert im.format == "PNG" and im.size == (640, 480) and im.mode in ("I;16", "I")
            raw = np.asarray(im)
        assert raw.max() <= 65535 and raw.min() >= 0
        valid = raw[raw > 0]
        assert 0.95 < valid.size / raw.size < 1.0  # ~1 % dropouts, like a real sensor
        assert 300 < np.median(valid) < 10000  # millimetres
        pose = read_pose(keys["pose"])
        np.testing.assert_allclose(pose[3], [0, 0, 0, 1])
        np.testing.assert_allclose(pose[:3, :3] @ pose[:3, :3].T, np.eye(3), atol=1e-5)


def test_frames_read_back(world):
    root, _ = world
    frame = read_frame(root / "2D" / "scene0001_00", 180)
    assert frame.color.shape == (480, 640, 3) and frame.depth.shape == (480, 640)
    assert frame.color.std() > 10  # textured, not a flat image


# ----------------------------------------------------------------------------------------- annotations


@pytest.mark.parametrize("scene", ["scene0000_00", "scene0001_00"])
def test_axis_alignment_is_a_real_rigid_transform(world, scene):
    root, _ = world
    a = read_axis_align(root / layout.scene_info_key(scene))
    assert not np.allclose(a, np.eye(4), atol=1e-3)
    np.testing.assert_allclose(a[3], [0, 0, 0, 1])
    np.testing.assert_allclose(a[:3, :3] @ a[:3, :3].T, np.eye(3), atol=1e-5)
    assert np.linalg.det(a[:3, :3]) == pytest.approx(1, abs=1e-5)
    # the aligned mesh lies in the room box [0, W] × [0, D] × [0, H] (walls and floor at 0); only observed
    # surfaces are kept, so the top is the highest wall point seen, not necessarily the ceiling
    aligned = apply_transform(a, read_ply(root / layout.mesh_key(scene)).vertices)
    np.testing.assert_allclose(aligned.min(0), 0, atol=2e-3)
    w, d, h = aligned.max(0)
    assert 5.0 - 2e-3 <= w <= 8.0 + 2e-3 and 4.5 - 2e-3 <= d <= 7.0 + 2e-3 and 1.0 <= h <= 2.9 + 2e-3
    # the raw scan is not already aligned
    raw = read_ply(root / layout.mesh_key(scene)).vertices
    assert np.abs(raw.min(0)[:2]).max() > 0.05


def test_aggregation_categories(world):
    root, desc = world
    table = read_label_tsv(root / layout.LABEL_TSV)
    counts = Counter()
    for scene in desc["scenes"]:
        for _, label, _ in read_aggregation(root / layout.aggregation_keys(scene)[0]):
            counts[label] += 1
            assert label in table.nyu40, label
        labels = [g[1] for g in read_aggregation(root / layout.aggregation_keys(scene)[0])]
        # surfaces come first; only what the frames observed is in the mesh (the ceiling mostly is not)
        assert labels.count("wall") >= 3 and "floor" in labels[:5]
    furniture = {k: v for k, v in counts.items() if k not in STUFF}
    assert len(furniture) >= 8, furniture
    assert max(furniture.values()) >= 2, furniture


@pytest.mark.parametrize("scene", ["scene0000_00", "scene0001_00"])
def test_segments_partition_the_mesh(world, scene):
    root, _ = world
    mesh = read_ply(root / layout.mesh_key(scene))
    raw = json.loads((root / layout.segs_key(scene)).read_text())["segIndices"]
    assert len(raw) == len(mesh.vertices)
    seg = read_segments(root / layout.segs_key(scene), len(mesh.vertices))
    groups = read_aggregation(root / layout.aggregation_keys(scene)[0])
    owner = Counter(s for _, _, segs in groups for s in segs)
    assert set(owner) == set(np.unique(seg).tolist())  # every segment is in a group, no group names a ghost
    assert set(owner.values()) == {1}  # ... and in exactly one
    # ScanNet convention: a segment id is the index of one of its vertices
    assert all(seg[s] == s for s in owner)


@pytest.mark.parametrize("scene", ["scene0000_00", "scene0001_00"])
def test_mesh_gt_of_synthetic_scene(world, scene):
    root, _ = world
    mesh = read_ply(root / layout.mesh_key(scene))
    a = read_axis_align(root / layout.scene_info_key(scene))
    aligned = apply_transform(a, mesh.vertices)
    seg = read_segments(root / layout.segs_key(scene), len(mesh.vertices))
    groups = read_aggregation(root / layout.aggregation_keys(scene)[0])
    table = read_label_tsv(root / layout.LABEL_TSV)
    gt = build_mesh_gt(aligned, seg, groups, table.nyu40)
    assert gt.unknown_labels == []
    assert (gt.instance > 0).all() and (gt.semantic > 0).all()  # every synthetic vertex is annotated
    assert sorted(gt.boxes) == [oid + 1 for oid, _, _ in groups]
    floor = next(oid for oid, label, _ in groups if label == "floor")
    floor_box = gt.boxes[floor + 1]
    assert floor_box[2] == pytest.approx(0, abs=2e-3) and floor_box[5] == pytest.approx(0, abs=2e-3)
    for oid, label, _ in groups:
        if label == "chair":  # standing on the floor (leg ends may be hidden), no taller than a chair
            box = gt.boxes[oid + 1]
            assert -2e-3 <= box[2] < 0.15 and box[5] < 1.05


@pytest.mark.parametrize("scene, index", [("scene0000_00", 100), ("scene0001_00", 0), ("scene0001_00", 160)])
def test_depth_back_projects_onto_the_mesh(world, scene, index):
    """Depth + c2w pose (unaligned scan frame) + DEPTH_INTRINSICS land on the mesh surface."""
    root, _ = world
    frame = read_frame(root / layout.scene_2d_dir(scene), index)
    fx, fy, cx, cy = DEPTH_INTRINSICS
    v, u = np.nonzero(frame.depth > 0)
    v, u = v[::5], u[::5]
    z = frame.depth[v, u].astype(np.float64)
    cam = np.stack([(u - cx) / fx * z, (v - cy) / fy * z, z], 1)
    world_pts = cam @ frame.pose[:3, :3].T + frame.pose[:3, 3]
    dist, _ = cKDTree(read_ply(root / layout.mesh_key(scene)).vertices).query(world_pts)
    assert np.median(dist) < 0.5 * SPEC.mesh_resolution + 0.02
    assert np.percentile(dist, 90) < SPEC.mesh_resolution
    # the camera stands inside the room
    a = read_axis_align(root / layout.scene_info_key(scene))
    pos = (a @ frame.pose)[:3, 3]
    assert (pos > 0.3).all() and 1.2 < pos[2] < 1.7


# ------------------------------------------------------------------------------------------- determinism


def test_same_seed_same_bytes(tmp_path):
    spec = SynthSpec(scenes=2, seed=5, **TINY)
    write_world(tmp_path / "a", spec)
    write_world(tmp_path / "b", spec)
    write_world(tmp_path / "c", spec, workers=2)
    a = _bytes(tmp_path / "a")
    assert any(k.endswith(".ply") for k in a) and any(k.endswith(".png") for k in a) and any("pose" in k for k in a)
    assert _bytes(tmp_path / "b") == a
    assert _bytes(tmp_path / "c") == a  # parallel writing gives the same world
    write_world(tmp_path / "d", SynthSpec(scenes=1, seed=6, **TINY))
    d = _bytes(tmp_path / "d")
    for key in ("scans/scene0000_00/scene0000_00_vh_clean_2.ply", "2D/scene0000_00/depth/0.png", "2D/scene0000_00/pose/20.txt"):
        assert d[key] != a[key], key


def test_rerun_returns_same_description(tmp_path):
    spec = SynthSpec(scenes=1, **TINY)
    first = write_world(tmp_path, spec)
    assert write_world(tmp_path, spec) == first


def test_rerun_does_not_rewrite(tmp_path):
    spec = SynthSpec(scenes=1, **TINY)
    write_world(tmp_path, spec)
    before = _files(tmp_path)
    write_world(tmp_path, spec)
    assert _files(tmp_path) == before


def test_rerun_after_interruption_skips_finished_scenes(tmp_path):
    spec = SynthSpec(scenes=2, **TINY)
    write_world(tmp_path, spec)
    original = _bytes(tmp_path)
    # interrupted before scene 1 and the description were written
    (tmp_path / "synth_world.json").unlink()
    shutil.rmtree(tmp_path / "scans" / "scene0001_00")
    shutil.rmtree(tmp_path / "2D" / "scene0001_00")
    scene0 = {k: v for k, v in _files(tmp_path).items() if "scene0000_00" in k}
    write_world(tmp_path, spec)
    assert _bytes(tmp_path) == original
    assert {k: v for k, v in _files(tmp_path).items() if "scene0000_00" in k} == scene0


# ----------------------------------------------------------------------------------------------- defects


def test_defects_are_where_the_description_says(defect_world):
    root, desc = defect_world
    plan = desc["defects"]
    assert json.loads((root / "synth_world.json").read_text())["defects"] == plan
    assert Counter(d["kind"] for d in plan) == Counter(DEFECTS)
    broken = set()
    for d in plan:
        kind, scene = d["kind"], d["scene"]
        if kind == "missing_scene":
            assert scene not in desc["scenes"]
            assert scene in desc["splits"]["val"]
            assert scene in (root / "scannetv2_val.txt").read_text().split()
            assert not (root / "scans" / scene).exists() and not (root / "2D" / scene).exists()
            continue
        if kind == "unknown_label":
            labels = [g[1] for g in read_aggregation(root / layout.aggregation_keys(scene)[0])]
            unknown = [lb for lb in labels if lb not in read_label_tsv(root / layout.LABEL_TSV).nyu40]
            assert len(unknown) == 1, unknown
            continue
        keys = {k: root / v for k, v in layout.frame_keys(scene, d["frame"]).items()}
        broken.add((scene, d["frame"]))
        assert d["frame"] % 200 == 0 and d["frame"] < 20 * 11
        if kind == "nan_pose":
            assert "nan" in keys["pose"].read_text()
            with pytest.raises(FrameSkip) as e:
                read_pose(keys["pose"])
            assert e.value.reason == "bad_pose"
        elif kind == "corrupt_png":
            with pytest.raises(FrameSkip) as e:
                read_depth(keys["depth"])
            assert e.value.reason == "corrupt_image"
        elif kind == "missing_frame":
            assert not keys["depth"].exists() and keys["color"].exists() and keys["pose"].exists()
            with pytest.raises(FrameSkip) as e:
                read_frame(root / "2D" / scene, d["frame"])
            assert e.value.reason == "missing_file"
        elif kind == "zero_depth":
            depth = read_depth(keys["depth"])
            assert depth.shape == (480, 640) and not depth.any()
        else:
            pytest.fail(f"unexpected defect {d}")
    # every other frame of the world is intact
    for scene in desc["scenes"]:
        for n in list_frame_indices(root / "2D" / scene):
            if (scene, n) not in broken:
                frame = read_frame(root / "2D" / scene, n)
                assert (frame.depth > 0).mean() > 0.95


def test_unknown_label_only_in_its_scene(defect_world):
    root, desc = defect_world
    (bad,) = [d["scene"] for d in desc["defects"] if d["kind"] == "unknown_label"]
    table = read_label_tsv(root / layout.LABEL_TSV)
    for scene in desc["scenes"]:
        mesh = read_ply(root / layout.mesh_key(scene))
        seg = read_segments(root / layout.segs_key(scene), len(mesh.vertices))
        gt = build_mesh_gt(mesh.vertices, seg, read_aggregation(root / layout.aggregation_keys(scene)[0]), table.nyu40)
        if scene == bad:
            assert len(gt.unknown_labels) == 1
            assert (gt.semantic == 0).any() and (gt.instance > 0).all()
        else:
            assert gt.unknown_labels == [] and (gt.semantic > 0).all()


def test_unknown_defect_kind(tmp_path):
    with pytest.raises(ValueError, match="flipped_normals"):
        write_world(tmp_path, SynthSpec(scenes=1, frames=2, defects={"flipped_normals": 1}))
    assert not (tmp_path / "synth_world.json").exists()


def test_too_many_frame_defects(tmp_path):
    with pytest.raises(ValueError, match="not enough frames"):
        write_world(tmp_path, SynthSpec(scenes=1, frames=2, defects={"nan_pose": 2}))  # only frame 0 may be used


def test_defect_plan_uses_all_free_frames():
    # 2 scenes × frames {0, 200} = 4 usable frames for 4 frame defects (seed 0 draws scene 0 three times)
    spec = SynthSpec(scenes=2, frames=11, seed=0, defects={k: 1 for k in ("nan_pose", "corrupt_png", "missing_frame", "zero_depth")})
    plan = _plan_defects(spec, [scene_name(i) for i in range(2)])
    assert sorted((d["scene"], d["frame"]) for d in plan) == [
        ("scene0000_00", 0), ("scene0000_00", 200), ("scene0001_00", 0), ("scene0001_00", 200)]
