"""Manifest schema versions: 1 (create_data) and 2 (packed CLIP paths) are read, others refused."""
from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from oseg3d.data import processed
from oseg3d.errors import DataError

ROW = {"scene_id": "scene0000_00", "data_path": "frames/scene0000_00.safetensors", "mesh_path": "mesh/x",
       "num_frames": 1, "num_points": 10, "frame_indices": [0], "poses": [[0.0] * 16], "axis_align_matrix": [0.0] * 16,
       "img_paths": ["2D/scene0000_00/color/0.jpg"], "clip_feat_paths": None}


@pytest.mark.parametrize("version", [1, 2])
def test_versions_1_and_2_are_read(tmp_path, version):
    uri = str(tmp_path / "m.parquet")
    row = dict(ROW, clip_feat_paths=["clip_feat/scene0000_00/color/0.safetensors"] if version == 2 else None)
    processed.write_manifest(uri, [row], "mv", "scannet_mv", "train", version=version)
    table = processed.read_manifest(uri)
    assert processed.manifest_version(table) == version and table.to_pylist() == [row]


def test_other_versions_are_refused_with_the_fix(tmp_path):
    uri = str(tmp_path / "m.parquet")
    table = pa.Table.from_pylist([ROW], schema=processed.mv_schema().with_metadata({"oseg3d.schema_version": "3"}))
    pq.write_table(table, uri)
    with pytest.raises(DataError, match="schema version") as e:
        processed.read_manifest(uri)
    assert "rerun create_data" in e.value.fix
    with pytest.raises(ValueError):
        processed.write_manifest(uri, [ROW], "mv", "scannet_mv", "train", version=3)


def test_clip_feat_key_follows_the_image_path():
    assert processed.clip_feat_key("2D/scene0000_00/color/40.jpg") == "clip_feat/scene0000_00/color/40.safetensors"
    assert processed.clip_feat_key("other/a.b/7.png") == "clip_feat/other/a.b/7.safetensors"
