"""oseg3d.scannet.labels: the label TSV, ScanNet-20 / ScanNet200 class mappings and dataset kinds."""
from __future__ import annotations

import shutil
from importlib import resources
from pathlib import Path

import numpy as np
import pytest

from oseg3d.errors import DataError
from oseg3d.scannet.labels import (
    SCANNET20_IDS,
    SCANNET20_NAMES,
    DatasetKind,
    class_mapping,
    parse_kind,
    read_label_tsv,
    scannet200_classes,
)

REAL_TSV = Path("/work/shared/reference/data/scannetv2-labels.combined.tsv")


@pytest.fixture
def real_tsv(tmp_path):
    if not REAL_TSV.is_file():
        pytest.skip(f"ScanNet's label table {REAL_TSV} is not available on this machine")
    dst = tmp_path / "scannetv2-labels.combined.tsv"
    shutil.copyfile(REAL_TSV, dst)
    return dst


@pytest.fixture
def synth_tsv(tmp_path):
    dst = tmp_path / "synth_labels.tsv"
    dst.write_bytes(resources.files("oseg3d.resources").joinpath("synth_labels.tsv").read_bytes())
    return dst


def test_read_real_tsv(real_tsv):
    table = read_label_tsv(real_tsv)
    # raw_category: (nyu40id, ScanNet200 id), values from ScanNet's own table
    expected = {"wall": (1, 1), "chair": (5, 2), "floor": (2, 3), "table": (7, 4), "couch": (6, 6),
                "bookshelf": (10, 18), "ceiling": (22, 41), "trash can": (39, 56)}
    for name, (nyu, s200) in expected.items():
        assert table.nyu40[name] == nyu, name
        assert table.scannet200[name] == s200, name
    assert len(table.nyu40) > 500  # the full table, not a subset
    assert table.lookup(parse_kind("scannet_sv")) is table.nyu40
    assert table.lookup(parse_kind("scannet200_mv")) is table.scannet200


def test_read_packaged_subset(synth_tsv):
    table = read_label_tsv(synth_tsv)
    assert len(table.nyu40) == 20
    assert (table.nyu40["chair"], table.scannet200["chair"]) == (5, 2)
    assert (table.nyu40["floor"], table.scannet200["floor"]) == (2, 3)
    assert (table.nyu40["sofa"], table.scannet200["sofa"]) == (6, 1313)
    assert (table.nyu40["desk"], table.scannet200["desk"]) == (14, 9)


def test_packaged_subset_agrees_with_real_tsv(real_tsv, synth_tsv):
    real, sub = read_label_tsv(real_tsv), read_label_tsv(synth_tsv)
    for name in sub.nyu40:
        assert (sub.nyu40[name], sub.scannet200[name]) == (real.nyu40[name], real.scannet200[name]), name


def test_missing_columns(tmp_path):
    path = tmp_path / "labels.tsv"
    path.write_text("id\traw_category\tcategory\n1\twall\twall\n")
    with pytest.raises(DataError) as e:
        read_label_tsv(path)
    assert str(path) in str(e.value) and "Fix:" in str(e.value)
    assert "nyu40id" in str(e.value)


def test_empty_table(tmp_path):
    path = tmp_path / "labels.tsv"
    path.write_text("id\traw_category\tnyu40id\n")
    with pytest.raises(DataError):
        read_label_tsv(path)


@pytest.mark.parametrize("row", ["1\twall\tx", "1\twall"], ids=["not_int", "short_row"])
def test_bad_ids(tmp_path, row):
    path = tmp_path / "labels.tsv"
    path.write_text(f"id\traw_category\tnyu40id\n2\tchair\t5\n{row}\n")
    with pytest.raises(DataError) as e:
        read_label_tsv(path)
    assert "wall" in str(e.value)


def test_missing_tsv(tmp_path):
    with pytest.raises(DataError) as e:
        read_label_tsv(tmp_path / "scannetv2-labels.combined.tsv")
    assert "Fix:" in str(e.value)


def test_scannet20_mapping():
    lut = class_mapping("scannet")
    assert lut.shape[0] >= 1401
    assert lut[1] == 0 and lut[2] == 1  # wall, floor: the stuff classes
    assert lut[5] == 4  # chair
    assert lut[14] == 12  # desk
    assert lut[39] == 19  # otherfurniture
    assert lut[13] == 20 and lut[0] == 20 and lut[40] == 20 and lut[1400] == 20  # ignore index
    np.testing.assert_array_equal(lut[list(SCANNET20_IDS)], np.arange(20))
    assert set(np.unique(lut)) == set(range(21))
    assert len(SCANNET20_NAMES) == 20 and SCANNET20_NAMES[4] == "chair"


def test_scannet200_mapping():
    ids, names = scannet200_classes()
    assert len(ids) == len(set(ids)) == 200 and len(names) == 200
    assert names[:4] == ("wall", "chair", "floor", "table")
    lut = class_mapping("scannet200")
    assert lut[1] == 0  # wall
    assert lut[3] == 1  # floor, after the 2↔3 swap
    assert lut[2] == 2  # chair
    assert lut[4] == 3  # table
    assert lut[5] == 4  # door
    assert lut[0] == 200 and lut[12] == 200 and lut[1400] == 200  # raw 12 is not a ScanNet200 class
    assert lut[1191] == 199 and ids[-1] == 1191
    valid = lut[lut < 200]
    assert len(valid) == 200 and set(valid) == set(range(200))


@pytest.mark.parametrize("name, bench, mode", [
    ("scannet_sv", "scannet", "sv"), ("scannet_mv", "scannet", "mv"),
    ("scannet200_sv", "scannet200", "sv"), ("scannet200_mv", "scannet200", "mv"),
])
def test_parse_kind(name, bench, mode):
    kind = parse_kind(name)
    assert kind == DatasetKind(bench, mode)
    assert kind.name == name
    assert kind.label_column == ("id" if bench == "scannet200" else "nyu40id")


@pytest.mark.parametrize("name", ["scannet", "scannet_xv", "s3dis_sv", "scannet200mv", "", "scannet20_sv", "SCANNET_SV"])
def test_parse_kind_rejects(name):
    with pytest.raises(ValueError, match="expected scannet_sv"):
        parse_kind(name)
