"""oseg3d.scannet.annotations: axis alignment, segments, aggregation → per-vertex GT, as ScanNet exports them."""
from __future__ import annotations

import json

import numpy as np
import pytest

from oseg3d.errors import DataError
from oseg3d.scannet.annotations import (
    apply_transform,
    build_mesh_gt,
    read_aggregation,
    read_axis_align,
    read_segments,
)

# scene0000_00.txt as ScanNet ships it (values of the real file's axisAlignment line)
SCENE_TXT = """colorHeight = 968
colorToDepthExtrinsics = 0.999973 0.006791 0.002776 -0.037886 -0.006767 0.999942 -0.008366 -0.003410 -0.002833 0.008347 0.999961 -0.021924 -0 0 -0 1
colorWidth = 1296
depthHeight = 480
depthWidth = 640
fx_color = 1170.187988
fx_depth = 571.623718
axisAlignment = 0.945519 0.325568 0.000000 -5.384390 -0.325568 0.945519 0.000000 -2.871780 0.000000 0.000000 1.000000 -0.064350 0.000000 0.000000 0.000000 1.000000
numColorFrames = 5578
sceneType = Apartment
"""


def test_read_axis_align_real_format(tmp_path):
    path = tmp_path / "scene0000_00.txt"
    path.write_text(SCENE_TXT)
    m = read_axis_align(path)
    assert m.shape == (4, 4) and m.dtype == np.float64
    np.testing.assert_array_equal(m, [
        [0.945519, 0.325568, 0.0, -5.384390],
        [-0.325568, 0.945519, 0.0, -2.871780],
        [0.0, 0.0, 1.0, -0.064350],
        [0.0, 0.0, 0.0, 1.0],
    ])


def test_read_axis_align_absent_is_identity(tmp_path):
    path = tmp_path / "scene0707_00.txt"  # ScanNet test scans have no axisAlignment
    path.write_text("\n".join(ln for ln in SCENE_TXT.splitlines() if not ln.startswith("axisAlignment")) + "\n")
    np.testing.assert_array_equal(read_axis_align(path), np.eye(4))


@pytest.mark.parametrize("value", [
    "1 0 0 0 0 1 0 0 0 0 1 0 0 0 0",  # 15 numbers
    "1 0 0 0 0 1 0 0 0 0 1 0 0 0 0 1 0",  # 17
    "1 0 0 x 0 1 0 0 0 0 1 0 0 0 0 1",
    "1 0 0 nan 0 1 0 0 0 0 1 0 0 0 0 1",
    "",
])
def test_read_axis_align_malformed(tmp_path, value):
    path = tmp_path / "scene0000_00.txt"
    path.write_text(f"sceneType = Apartment\naxisAlignment = {value}\n")
    with pytest.raises(DataError) as e:
        read_axis_align(path)
    assert str(path) in str(e.value) and "Fix:" in str(e.value)


def test_read_axis_align_missing_file(tmp_path):
    with pytest.raises(DataError):
        read_axis_align(tmp_path / "scene0000_00.txt")


def test_apply_transform():
    m = np.array([[0, -1, 0, 1], [1, 0, 0, 2], [0, 0, 1, 3], [0, 0, 0, 1]], np.float64)  # 90° about z, then shift
    out = apply_transform(m, np.array([[1, 0, 0], [0, 2, 0], [0, 0, -1]], np.float32))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [[1, 3, 3], [-1, 2, 3], [1, 2, 2]], atol=1e-6)


def _segs_json(path, seg):
    path.write_text(json.dumps({"params": {"kThresh": "0.0001", "segMinVerts": "20"}, "sceneId": "scene0000_00",
                                "segIndices": seg}))


def test_read_segments(tmp_path):
    path = tmp_path / "scene0000_00_vh_clean_2.0.010000.segs.json"
    _segs_json(path, [7, 7, 3, 3, 3])
    seg = read_segments(path, 5)
    assert seg.dtype == np.int64
    np.testing.assert_array_equal(seg, [7, 7, 3, 3, 3])


@pytest.mark.parametrize("n", [4, 6])
def test_read_segments_wrong_vertex_count(tmp_path, n):
    path = tmp_path / "s.segs.json"
    _segs_json(path, [7, 7, 3, 3, 3])
    with pytest.raises(DataError) as e:
        read_segments(path, n)
    assert str(path) in str(e.value) and f"{n} vertices" in str(e.value)


def test_read_segments_without_seg_indices(tmp_path):
    path = tmp_path / "s.segs.json"
    path.write_text('{"sceneId": "scene0000_00"}')
    with pytest.raises(DataError):
        read_segments(path, 5)


def test_read_segments_invalid_json_and_missing(tmp_path):
    path = tmp_path / "s.segs.json"
    path.write_text('{"segIndices": [1, 2,')
    with pytest.raises(DataError, match="not valid JSON"):
        read_segments(path, 2)
    with pytest.raises(DataError, match="missing"):
        read_segments(tmp_path / "absent.segs.json", 2)


AGGREGATION = {
    "sceneId": "scannet.scene0000_00",
    "appId": "Aggregator.v2",
    "segGroups": [
        {"id": 0, "objectId": 0, "segments": [43652, 43832, 43632], "label": "window"},
        {"id": 1, "objectId": 1, "segments": [19189], "label": "chair"},
        {"id": 2, "objectId": 2, "segments": [], "label": "trash can"},
    ],
    "segmentsFile": "scannet.scene0000_00_vh_clean_2.0.010000.segs.json",
}


def test_read_aggregation_real_format(tmp_path):
    path = tmp_path / "scene0000_00.aggregation.json"
    path.write_text(json.dumps(AGGREGATION))
    assert read_aggregation(path) == [
        (0, "window", [43652, 43832, 43632]),
        (1, "chair", [19189]),
        (2, "trash can", []),
    ]


@pytest.mark.parametrize("text", ["{not json", "\xff\xfe garbage"], ids=["syntax", "encoding"])
def test_read_aggregation_invalid_json(tmp_path, text):
    path = tmp_path / "scene0000_00.aggregation.json"
    path.write_bytes(text.encode("latin-1"))
    with pytest.raises(DataError) as e:
        read_aggregation(path)
    assert str(path) in str(e.value) and "Fix:" in str(e.value)


@pytest.mark.parametrize("data", [
    {"sceneId": "x"},
    {"segGroups": [{"id": 0, "segments": [1], "label": "chair"}]},
    {"segGroups": [{"objectId": 0, "segments": ["a"], "label": "chair"}]},
    {"segGroups": [{"objectId": 0, "segments": None, "label": "chair"}]},
], ids=["no_groups", "no_object_id", "bad_segment", "null_segments"])
def test_read_aggregation_malformed(tmp_path, data):
    path = tmp_path / "a.aggregation.json"
    path.write_text(json.dumps(data))
    with pytest.raises(DataError, match="malformed segGroups"):
        read_aggregation(path)


# 8 vertices; segment ids are representative vertex indices, deliberately not sorted by vertex
VERTS = np.array([
    [0, 0, 0], [1, 0, 0], [0, 2, 0], [1, 2, 1],  # chair: segments 10 and 20
    [5, 5, 5], [6, 4, 5],  # unknown label "glorp": segment 30
    [9, 9, 9], [-9, -9, -9],  # unannotated: segments 40, 50
], np.float32)
SEGMENT = np.array([10, 20, 10, 20, 30, 30, 40, 50], np.int64)
LABELS = {"chair": 5, "table": 7, "wall": 1}


def test_build_mesh_gt_hand_example():
    align = np.array([[0, -1, 0, 1], [1, 0, 0, 0], [0, 0, 1, 0.5], [0, 0, 0, 1]], np.float64)
    aligned = apply_transform(align, VERTS)
    groups = [(0, "chair", [10, 20]), (3, "glorp", [30]), (4, "table", [12345])]  # 12345: no such segment

    gt = build_mesh_gt(aligned, SEGMENT, groups, LABELS)

    np.testing.assert_array_equal(gt.instance, [1, 1, 1, 1, 4, 4, 0, 0])
    np.testing.assert_array_equal(gt.semantic, [5, 5, 5, 5, 0, 0, 0, 0])
    assert gt.instance.dtype == np.int32 and gt.semantic.dtype == np.int32
    np.testing.assert_array_equal(gt.segment, SEGMENT)
    assert gt.unknown_labels == ["glorp"]
    assert sorted(gt.boxes) == [1, 4]  # the empty "table" group has no vertices, hence no box
    # aligned chair vertices: (1,0,.5) (1,1,.5) (-1,0,.5) (-1,1,1.5); glorp: (-4,5,5.5) (-3,6,5.5)
    np.testing.assert_allclose(gt.boxes[1], [-1, 0, 0.5, 1, 1, 1.5], atol=1e-6)
    np.testing.assert_allclose(gt.boxes[4], [-4, 5, 5.5, -3, 6, 5.5], atol=1e-6)
    assert gt.boxes[1].dtype == np.float32


def test_build_mesh_gt_later_group_wins():
    groups = [(0, "chair", [10, 20]), (1, "table", [20])]
    gt = build_mesh_gt(VERTS, SEGMENT, groups, LABELS)
    np.testing.assert_array_equal(gt.instance, [1, 2, 1, 2, 0, 0, 0, 0])
    np.testing.assert_array_equal(gt.semantic, [5, 7, 5, 7, 0, 0, 0, 0])
    np.testing.assert_allclose(gt.boxes[1], [0, 0, 0, 0, 2, 0])
    np.testing.assert_allclose(gt.boxes[2], [1, 0, 0, 1, 2, 1])
    assert gt.unknown_labels == []


def test_build_mesh_gt_no_groups():
    gt = build_mesh_gt(VERTS, SEGMENT, [], LABELS)
    assert not gt.instance.any() and not gt.semantic.any()
    assert gt.boxes == {} and gt.unknown_labels == []


@pytest.mark.parametrize("text", ['{"segIndices": ["a", "b"]}', '{"segIndices": null}', "[1, 2]"],
                         ids=["strings", "null", "top_level_list"])
def test_read_segments_malformed_is_dataerror(tmp_path, text):
    path = tmp_path / "s.segs.json"
    path.write_text(text)
    with pytest.raises(DataError):
        read_segments(path, 2)
