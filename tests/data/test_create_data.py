"""create_data on a small synthetic world: the contract every later stage relies on."""
from __future__ import annotations

import os

import numpy as np
import pyarrow.parquet as pq
import pytest
from safetensors.numpy import load_file

from oseg3d.data import processed
from oseg3d.data.create_data import CreateDataParams, create_data
from oseg3d.data.scene_job import load_scene_gt
from oseg3d.scannet.annotations import apply_transform
from oseg3d.scannet.labels import read_label_tsv, parse_kind

KINDS = ("scannet_sv", "scannet_mv", "scannet200_sv", "scannet200_mv")


def _frames(out, scene):
    return load_file(str(out / processed.frames_key(scene)))


@pytest.mark.parametrize("kind", KINDS)
def test_every_frame_has_exactly_num_points_and_contiguous_superpoints(datasets, kind):
    out, rep = datasets[kind]
    assert rep["frames"]["kept"] > 0
    for f in sorted((out / "frames").iterdir()):
        a = load_file(str(f))
        n = len(a["frame_index"])
        assert a["points"].shape == (n, 20000, 6) and a["points"].dtype == np.float32
        for key in ("instance", "semantic", "superpoint"):
            assert a[key].shape == (n, 20000)
        for sp in a["superpoint"]:
            assert np.array_equal(np.unique(sp), np.arange(sp.max() + 1))
        assert np.isfinite(a["points"]).all()
        assert (a["points"][..., 3:] >= 0).all() and (a["points"][..., 3:] <= 255).all()


@pytest.mark.parametrize("kind", KINDS)
def test_defects_are_counted_not_crashed_on(datasets, raw_world, kind):
    _, desc = raw_world
    _, rep = datasets[kind]
    skipped = rep["frames"]["skipped"]
    # each frame defect sits on a multiple of 200, which both SV and MV use
    assert skipped == {"bad_pose": 1, "corrupt_image": 1, "missing_file": 1, "no_valid_depth": 1}
    assert rep["scenes"]["missing"] == [d["scene"] for d in desc["defects"] if d["kind"] == "missing_scene"]
    assert list(rep["unknown_labels"].values()) == [["glorp"]]
    assert rep["scenes"]["failed"] == {}


def test_instance_ids_are_the_same_object_across_frames(datasets, raw_world):
    """MV frames share scan coordinates: a scene-global instance id must sit on the same mesh object."""
    root, _ = raw_world
    out, _ = datasets["scannet_mv"]
    labels = read_label_tsv(root / "scannetv2-labels.combined.tsv").lookup(parse_kind("scannet_mv"))
    scene = "scene0000_00"
    a = _frames(out, scene)
    mesh, align, gt, _ = load_scene_gt(root, scene, labels)
    aligned_mesh = apply_transform(align, mesh.vertices)
    seen_in = {}
    for f in range(len(a["frame_index"])):
        pts = apply_transform(align, a["points"][f, :, :3])
        for inst in np.unique(a["instance"][f]):
            if inst == 0:
                continue
            m = a["instance"][f] == inst
            lo, hi = gt.boxes[int(inst)][:3] - 0.05, gt.boxes[int(inst)][3:] + 0.05
            assert ((pts[m] >= lo) & (pts[m] <= hi)).all()  # inside that object's box
            sem = np.unique(a["semantic"][f][m])
            assert len(sem) == 1 and sem[0] == gt.semantic[gt.instance == inst][0]
            seen_in.setdefault(int(inst), []).append(f)
    assert max(len(v) for v in seen_in.values()) >= 3  # objects recur across frames
    assert aligned_mesh.shape[0] == len(gt.instance)


def test_sv_frames_are_centred_and_mv_frames_are_not(datasets):
    sv, mv = _frames(datasets["scannet_sv"][0], "scene0001_00"), _frames(datasets["scannet_mv"][0], "scene0001_00")
    assert np.abs(sv["points"][..., :3].mean(1)).max() < 1e-3
    # centring is a translation: the centred pose maps the same camera points onto the centred cloud
    row = int(np.nonzero(mv["frame_index"] == sv["frame_index"][0])[0][0])
    shift = sv["pose"][0, :3, 3] - sv["pose_centered"][0, :3, 3]
    np.testing.assert_allclose(shift, sv["center"][0], atol=1e-4)
    assert mv["frame_index"][row] == sv["frame_index"][0]


def test_scannet200_semantics_use_the_tsv_id_column(datasets):
    a20 = _frames(datasets["scannet_mv"][0], "scene0000_00")
    a200 = _frames(datasets["scannet200_mv"][0], "scene0000_00")
    np.testing.assert_array_equal(a20["instance"], a200["instance"])  # same sampling, same objects
    chair20 = a20["semantic"] == 5  # nyu40 chair
    if chair20.any():
        assert (a200["semantic"][chair20] == 2).all()  # ScanNet200 raw id of chair


def test_manifests_readable_with_plain_pyarrow(datasets):
    sv = pq.read_table(datasets["scannet_sv"][0] / "manifest_train.parquet")
    assert sv.schema.metadata[b"oseg3d.schema_version"] == str(processed.SCHEMA_VERSION).encode()
    row = sv.to_pylist()[0]
    assert row["img_path"] == f"2D/{row['scene_id']}/color/{row['frame_index']}.jpg"
    assert row["frame_index"] % 200 == 0 and len(row["pose"]) == 16
    mv = pq.read_table(datasets["scannet_mv"][0] / "manifest_val.parquet").to_pylist()
    assert all(all(i % 40 == 0 for i in r["frame_indices"]) for r in mv)
    assert all(r["frame_indices"] == sorted(r["frame_indices"]) for r in mv)
    assert all(len(r["poses"]) == r["num_frames"] == len(r["img_paths"]) for r in mv)
    total = sum(processed.read_manifest(str(datasets["scannet_sv"][0] / f"manifest_{s}.parquet")).num_rows
                for s in ("train", "val"))
    assert total == datasets["scannet_sv"][1]["frames"]["kept"]


def test_mv_mesh_gt_written_for_evaluation(datasets):
    out, _ = datasets["scannet_mv"]
    m = load_file(str(out / processed.mesh_key("scene0000_00")))
    assert m["vertices"].shape[1] == 6 and len(m["instance"]) == len(m["segment"]) == len(m["vertices"])
    assert not (datasets["scannet_sv"][0] / "mesh").exists()


def test_rerun_skips_every_scene_and_changes_nothing(datasets, raw_world):
    root, _ = raw_world
    out, first = datasets["scannet_sv"]
    before = {p: p.stat().st_mtime_ns for p in (out / "frames").iterdir()}
    rep = create_data(str(root), str(out), CreateDataParams(kind="scannet_sv"))
    assert rep["scenes"]["reused"] == rep["scenes"]["done"] == 3
    assert {p: p.stat().st_mtime_ns for p in (out / "frames").iterdir()} == before
    assert rep["frames"] == first["frames"]


def test_changed_parameters_redo_the_scenes(raw_world, tmp_path):
    root, _ = raw_world
    params = CreateDataParams(kind="scannet_sv", num_points=2000)
    create_data(str(root), str(tmp_path), params, scenes=["scene0000_00"])
    rep = create_data(str(root), str(tmp_path), CreateDataParams(kind="scannet_sv", num_points=3000),
                      scenes=["scene0000_00"])
    assert rep["scenes"]["reused"] == 0
    assert _frames(tmp_path, "scene0000_00")["points"].shape[1] == 3000


def test_results_do_not_depend_on_worker_count(raw_world, datasets, tmp_path):
    root, _ = raw_world
    create_data(str(root), str(tmp_path), CreateDataParams(kind="scannet_sv"), workers=2)
    ref = datasets["scannet_sv"][0]
    for f in sorted((ref / "frames").iterdir()):
        assert (tmp_path / "frames" / f.name).read_bytes() == f.read_bytes()


def test_s3_in_and_out(raw_world, s3_bucket, tmp_path, datasets):
    from oseg3d import storage

    root, _ = raw_world
    raw_uri, out_uri = f"{s3_bucket}/raw", f"{s3_bucket}/scannet_mv"
    storage.upload_tree(str(root), raw_uri, workers=8, progress=False)
    rep = create_data(raw_uri, out_uri, CreateDataParams(kind="scannet_mv"), scenes=["scene0001_00"])
    assert rep["scenes"]["done"] == 1 and rep["frames"]["kept"] > 0
    key = processed.frames_key("scene0001_00")
    assert storage.read_bytes(f"{out_uri}/{key}") == (datasets["scannet_mv"][0] / key).read_bytes()
    assert processed.read_manifest(f"{out_uri}/manifest_train.parquet").num_rows == 1
    rep2 = create_data(raw_uri, out_uri, CreateDataParams(kind="scannet_mv"), scenes=["scene0001_00"])
    assert rep2["scenes"]["reused"] == 1


def test_missing_split_list_is_a_named_error(tmp_path):
    from oseg3d.errors import DataError

    with pytest.raises(DataError, match=r"scannetv2_train.txt: split list is missing\. Fix:"):
        create_data(str(tmp_path), str(tmp_path / "out"), CreateDataParams(kind="scannet_sv"))


def test_broken_scene_file_fails_that_scene_only(raw_world, tmp_path):
    import shutil

    root, _ = raw_world
    raw = tmp_path / "raw"
    shutil.copytree(root, raw)
    ply = raw / "scans/scene0000_00/scene0000_00_vh_clean_2.ply"
    ply.write_bytes(ply.read_bytes()[:5000])
    rep = create_data(str(raw), str(tmp_path / "out"), CreateDataParams(kind="scannet_sv"))
    assert list(rep["scenes"]["failed"]) == ["scene0000_00"]
    assert "truncated" in rep["scenes"]["failed"]["scene0000_00"]
    assert rep["scenes"]["done"] == 2
    assert not os.path.exists(tmp_path / "out" / processed.marker_key("scene0000_00"))
