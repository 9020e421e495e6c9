"""oseg3d.scannet.ply: ScanNet's binary PLY layout, read byte-exactly and written back."""
from __future__ import annotations

import struct

import numpy as np
import pytest

from oseg3d.errors import DataError
from oseg3d.scannet.ply import Mesh, read_ply, write_ply

# Four vertices, two triangles: the exact values a hand-made file must read back as.
VERTS = np.array([[0.0, 0.0, 0.0], [1.5, 0.0, -0.25], [1.5, 2.0, 0.0], [0.0, 2.0, 3.125]], np.float32)
RGBA = [(255, 0, 0, 255), (0, 255, 0, 255), (0, 0, 255, 255), (10, 20, 30, 128)]
FACES = [(0, 1, 2), (0, 2, 3)]

SCANNET_HEADER = (
    "ply\n"
    "format binary_little_endian 1.0\n"
    "comment VCGLIB generated\n"
    "element vertex {n}\n"
    "property float x\n"
    "property float y\n"
    "property float z\n"
    "property uchar red\n"
    "property uchar green\n"
    "property uchar blue\n"
    "property uchar alpha\n"
    "element face {m}\n"
    "property list uchar int vertex_indices\n"
    "end_header\n"
)


def _scannet_ply_bytes(faces=FACES, verts=VERTS, rgba=RGBA) -> bytes:
    body = b"".join(struct.pack("<3f4B", *v, *c) for v, c in zip(verts.tolist(), rgba))
    body += b"".join(struct.pack(f"<B{len(f)}i", len(f), *f) for f in faces)
    return SCANNET_HEADER.format(n=len(verts), m=len(faces)).encode("ascii") + body


def _assert_dataerror_names_file(excinfo, path):
    msg = str(excinfo.value)
    assert str(path) in msg
    assert "Fix:" in msg


def test_read_scannet_layout_exact(tmp_path):
    path = tmp_path / "scene0000_00_vh_clean_2.ply"
    data = _scannet_ply_bytes()
    # the hand-built file really is ScanNet's layout: header + 4 × 16-byte vertices + 2 × 13-byte faces
    assert len(data) == len(SCANNET_HEADER.format(n=4, m=2)) + 4 * 16 + 2 * 13
    path.write_bytes(data)

    mesh = read_ply(path)

    assert mesh.vertices.dtype == np.float32 and mesh.vertices.shape == (4, 3)
    np.testing.assert_array_equal(mesh.vertices, VERTS)
    assert mesh.colors.dtype == np.uint8
    np.testing.assert_array_equal(mesh.colors, [[255, 0, 0], [0, 255, 0], [0, 0, 255], [10, 20, 30]])
    assert mesh.faces.dtype == np.int32
    np.testing.assert_array_equal(mesh.faces, [[0, 1, 2], [0, 2, 3]])


def test_write_ply_is_scannet_layout_and_round_trips(tmp_path):
    rng = np.random.default_rng(0)
    mesh = Mesh(
        rng.normal(size=(50, 3)).astype(np.float32),
        rng.integers(0, 256, (50, 3)).astype(np.uint8),
        rng.integers(0, 50, (30, 3)).astype(np.int32),
    )
    path = tmp_path / "m.ply"
    write_ply(path, mesh)

    data = path.read_bytes()
    header, sep, body = data.partition(b"end_header\n")
    assert sep
    lines = header.decode("ascii").splitlines()
    expected = SCANNET_HEADER.format(n=50, m=30).splitlines()[:-1]
    # identical to ScanNet's header apart from the free-text comment line
    assert [ln for ln in lines if not ln.startswith("comment")] == [ln for ln in expected if not ln.startswith("comment")]
    assert len(body) == 50 * 16 + 30 * 13
    assert body[12:16] == bytes([*mesh.colors[0], 255])  # alpha written as 255
    assert body[50 * 16] == 3  # face vertex count as uchar

    back = read_ply(path)
    np.testing.assert_array_equal(back.vertices, mesh.vertices)
    np.testing.assert_array_equal(back.colors, mesh.colors)
    np.testing.assert_array_equal(back.faces, mesh.faces)


def test_write_ply_empty_faces_round_trip(tmp_path):
    mesh = Mesh(VERTS.copy(), np.zeros((4, 3), np.uint8), np.zeros((0, 3), np.int32))
    write_ply(tmp_path / "m.ply", mesh)
    back = read_ply(tmp_path / "m.ply")
    np.testing.assert_array_equal(back.vertices, VERTS)
    assert back.faces.shape == (0, 3)


def test_other_property_order_and_extra_property(tmp_path):
    header = (
        "ply\nformat binary_little_endian 1.0\nobj_info exported elsewhere\nelement vertex 4\n"
        "property uchar red\nproperty uchar green\nproperty uchar blue\n"
        "property float x\nproperty float nx\nproperty float y\nproperty float z\nproperty uchar alpha\n"
        "element face 2\nproperty list uchar int vertex_indices\nend_header\n"
    )
    body = b"".join(struct.pack("<3B4fB", *c[:3], v[0], 9.0, v[1], v[2], c[3]) for v, c in zip(VERTS.tolist(), RGBA))
    body += b"".join(struct.pack("<B3i", 3, *f) for f in FACES)
    path = tmp_path / "other.ply"
    path.write_bytes(header.encode("ascii") + body)

    mesh = read_ply(path)

    np.testing.assert_array_equal(mesh.vertices, VERTS)
    np.testing.assert_array_equal(mesh.colors, [[255, 0, 0], [0, 255, 0], [0, 0, 255], [10, 20, 30]])
    np.testing.assert_array_equal(mesh.faces, FACES)


def test_no_colours_default_grey(tmp_path):
    header = (
        "ply\nformat binary_little_endian 1.0\nelement vertex 2\nproperty float x\nproperty float y\n"
        "property float z\nend_header\n"
    )
    path = tmp_path / "grey.ply"
    path.write_bytes(header.encode() + struct.pack("<6f", 1, 2, 3, 4, 5, 6))
    mesh = read_ply(path)
    np.testing.assert_array_equal(mesh.vertices, [[1, 2, 3], [4, 5, 6]])
    np.testing.assert_array_equal(mesh.colors, np.full((2, 3), 128))
    assert mesh.faces.shape == (0, 3)


def test_polygons_are_fan_triangulated(tmp_path):
    verts = np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0], [-1, 0.5, 0]], np.float32)
    rgba = [(1, 2, 3, 255)] * 5
    path = tmp_path / "quads.ply"
    path.write_bytes(_scannet_ply_bytes(faces=[(0, 1, 2, 3), (1, 2, 4), (0, 1, 2, 3, 4)], verts=verts, rgba=rgba))

    mesh = read_ply(path)

    np.testing.assert_array_equal(
        mesh.faces, [[0, 1, 2], [0, 2, 3], [1, 2, 4], [0, 1, 2], [0, 2, 3], [0, 3, 4]]
    )


def test_missing_file(tmp_path):
    path = tmp_path / "nope.ply"
    with pytest.raises(DataError) as e:
        read_ply(path)
    _assert_dataerror_names_file(e, path)


@pytest.mark.parametrize("cut", [5, 4 * 16 - 1, 4 * 16 + 13 + 7], ids=["in_vertices", "last_vertex", "in_faces"])
def test_truncated_body(tmp_path, cut):
    data = _scannet_ply_bytes()
    header_len = len(SCANNET_HEADER.format(n=4, m=2))
    path = tmp_path / "trunc.ply"
    path.write_bytes(data[: header_len + cut])
    with pytest.raises(DataError) as e:
        read_ply(path)
    _assert_dataerror_names_file(e, path)


def test_truncated_quads(tmp_path):
    verts = np.zeros((4, 3), np.float32)
    data = _scannet_ply_bytes(faces=[(0, 1, 2, 3), (0, 1, 2, 3)], verts=verts, rgba=[(0, 0, 0, 0)] * 4)
    path = tmp_path / "trunc.ply"
    path.write_bytes(data[:-3])
    with pytest.raises(DataError) as e:
        read_ply(path)
    _assert_dataerror_names_file(e, path)


def test_truncated_header(tmp_path):
    path = tmp_path / "hdr.ply"
    path.write_bytes(SCANNET_HEADER.format(n=4, m=2).encode()[:60])
    with pytest.raises(DataError) as e:
        read_ply(path)
    _assert_dataerror_names_file(e, path)


def test_not_a_ply(tmp_path):
    path = tmp_path / "x.ply"
    path.write_bytes(b"solid cube\nfacet normal 0 0 1\n")
    with pytest.raises(DataError) as e:
        read_ply(path)
    _assert_dataerror_names_file(e, path)


@pytest.mark.parametrize("fmt", ["ascii 1.0", "binary_big_endian 1.0"])
def test_unsupported_format(tmp_path, fmt):
    path = tmp_path / "fmt.ply"
    text = SCANNET_HEADER.format(n=1, m=0).replace("binary_little_endian 1.0", fmt) + "0 0 0 1 2 3 255\n"
    path.write_bytes(text.encode())
    with pytest.raises(DataError) as e:
        read_ply(path)
    _assert_dataerror_names_file(e, path)
    assert fmt.split()[0] in str(e.value)


@pytest.mark.parametrize("bad", [4, -1])
def test_face_index_out_of_range(tmp_path, bad):
    path = tmp_path / "range.ply"
    path.write_bytes(_scannet_ply_bytes(faces=[(0, 1, 2), (0, 2, bad)]))
    with pytest.raises(DataError) as e:
        read_ply(path)
    _assert_dataerror_names_file(e, path)
    assert "range" in str(e.value)


@pytest.mark.parametrize("header", [
    "ply\nformat binary_little_endian 1.0\nelement vertex 1\nproperty half x\nproperty float y\nproperty float z\nend_header\n",
    "ply\nformat binary_little_endian 1.0\nelement vertex abc\nproperty float x\nend_header\n",
    "ply\nformat binary_little_endian 1.0\nelement vertex 1\nproperty float a\nproperty float b\nproperty float c\nend_header\n",
    "ply\nformat\nelement vertex 1\nend_header\n",
], ids=["unknown_type", "bad_count", "no_xyz", "empty_format"])
def test_malformed_header_is_dataerror(tmp_path, header):
    path = tmp_path / "bad.ply"
    path.write_bytes(header.encode() + b"\0" * 12)
    with pytest.raises(DataError) as e:
        read_ply(path)
    _assert_dataerror_names_file(e, path)
