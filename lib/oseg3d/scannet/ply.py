"""Binary PLY meshes as ScanNet writes them (`_vh_clean_2.ply`).

ScanNet's meshes are `binary_little_endian 1.0` with vertex `x y z` (float) `red green blue alpha`
(uchar) and faces `list uchar int vertex_indices`. The reader parses the header generically (any
scalar property order, extra properties ignored) so exports from other tools load too, and reads the
body with numpy structured dtypes: a 300k-vertex mesh loads in milliseconds.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from oseg3d.errors import DataError

__all__ = ["Mesh", "read_ply", "write_ply"]

_PLY_TYPES = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1", "short": "i2", "int16": "i2",
    "ushort": "u2", "uint16": "u2", "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4", "double": "f8", "float64": "f8",
}


@dataclass
class Mesh:
    """A coloured triangle mesh.

    Attributes:
        vertices: (N, 3) float32 xyz.
        colors: (N, 3) uint8 rgb.
        faces: (M, 3) int32 vertex indices.
    """

    vertices: np.ndarray
    colors: np.ndarray
    faces: np.ndarray


def _parse_header(f, path: Path) -> tuple[str, list[tuple[str, int, list]]]:
    if f.readline().strip() != b"ply":
        raise DataError(path, "not a PLY file (missing 'ply' magic)", "re-export the mesh as binary PLY")
    fmt, elements = None, []
    while True:
        line = f.readline()
        if not line:
            raise DataError(path, "PLY header has no 'end_header'", "the file is truncated; re-download it")
        tok = line.decode("ascii", "replace").split()
        if not tok or tok[0] in ("comment", "obj_info"):
            continue
        if tok[0] == "end_header":
            break
        try:
            if tok[0] == "format":
                fmt = tok[1]
            elif tok[0] == "element":
                elements.append((tok[1], int(tok[2]), []))
            elif tok[0] == "property" and elements:
                types = tok[2:4] if tok[1] == "list" else tok[1:2]
                if any(t not in _PLY_TYPES for t in types) or len(tok) < (5 if tok[1] == "list" else 3):
                    raise ValueError(f"unsupported property {' '.join(tok[1:])!r}")
                elements[-1][2].append(tok[1:])
        except (IndexError, ValueError) as e:
            raise DataError(path, f"malformed PLY header line {line.strip()!r} ({e})", "re-export the mesh as binary PLY") from None
    if fmt != "binary_little_endian":
        raise DataError(path, f"PLY format {fmt!r} is not supported", "use binary_little_endian PLY (ScanNet's format)")
    return fmt, elements


def _vertex_dtype(props: list, path: Path) -> np.dtype:
    fields = []
    for p in props:
        if p[0] == "list":
            raise DataError(path, "list property in the vertex element", "export vertices with scalar properties only")
        fields.append((p[1], "<" + _PLY_TYPES[p[0]]))
    return np.dtype(fields)


def _read_faces(buf: memoryview, offset: int, count: int, props: list, path: Path) -> tuple[np.ndarray, int]:
    _, cnt_t, idx_t, _name = props[0]
    cnt_dt, idx_dt = np.dtype("<" + _PLY_TYPES[cnt_t]), np.dtype("<" + _PLY_TYPES[idx_t])
    # Fast path: all faces are triangles (true for every ScanNet mesh).
    tri = np.dtype([("n", cnt_dt), ("v", idx_dt, (3,))])
    need = tri.itemsize * count
    if len(buf) - offset >= need:
        arr = np.frombuffer(buf, tri, count, offset)
        if count == 0 or (arr["n"] == 3).all():
            return arr["v"].astype(np.int32), offset + need
    # Slow path: polygons of any size, triangulated as fans.
    faces = []
    for _ in range(count):
        n = int(np.frombuffer(buf, cnt_dt, 1, offset)[0])
        offset += cnt_dt.itemsize
        idx = np.frombuffer(buf, idx_dt, n, offset)
        offset += idx_dt.itemsize * n
        faces.extend((idx[0], idx[i], idx[i + 1]) for i in range(1, n - 1))
    return np.asarray(faces, np.int32).reshape(-1, 3), offset


def read_ply(path: str | Path) -> Mesh:
    """Read a binary little-endian PLY mesh with vertex colours.

    Args:
        path: local file path.
    Returns:
        The mesh; colours default to grey when the file has none, faces to empty.
    Raises:
        DataError: the file is missing, truncated or not a supported PLY.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "mesh file is missing", "check the scan folder; ScanNet ships <scene>_vh_clean_2.ply")
    data = path.read_bytes()
    import io

    f = io.BytesIO(data)
    _, elements = _parse_header(f, path)
    offset = f.tell()
    buf = memoryview(data)
    verts = colors = None
    faces = np.zeros((0, 3), np.int32)
    for name, count, props in elements:
        if name == "vertex":
            dt = _vertex_dtype(props, path)
            if len(buf) - offset < dt.itemsize * count:
                raise DataError(path, f"PLY body truncated ({count} vertices declared)", "re-download the mesh")
            arr = np.frombuffer(buf, dt, count, offset)
            offset += dt.itemsize * count
            names = dt.names
            if not {"x", "y", "z"} <= set(names):
                raise DataError(path, "vertex element has no x, y, z properties", "re-export the mesh with vertex positions")
            verts = np.stack([arr["x"], arr["y"], arr["z"]], 1).astype(np.float32)
            if {"red", "green", "blue"} <= set(names):
                colors = np.stack([arr["red"], arr["green"], arr["blue"]], 1).astype(np.uint8)
        elif name == "face":
            if not props or props[0][0] != "list":
                raise DataError(path, "face element without a vertex index list", "export faces as 'list uchar int vertex_indices'")
            try:
                faces, offset = _read_faces(buf, offset, count, props, path)
            except (ValueError, IndexError) as e:
                raise DataError(path, f"PLY faces truncated ({e})", "re-download the mesh") from None
        else:
            dt = _vertex_dtype(props, path)
            offset += dt.itemsize * count
    if verts is None:
        raise DataError(path, "PLY has no vertex element", "re-export the mesh")
    if faces.size and (faces.max() >= len(verts) or faces.min() < 0):
        raise DataError(path, "face indices out of range", "the mesh is corrupt; re-download it")
    if colors is None:
        colors = np.full((len(verts), 3), 128, np.uint8)
    return Mesh(verts, colors, faces)


def write_ply(path: str | Path, mesh: Mesh) -> None:
    """Write `mesh` in ScanNet's exact layout (x y z float, rgba uchar, list uchar int faces)."""
    n, m = len(mesh.vertices), len(mesh.faces)
    header = (
        "ply\nformat binary_little_endian 1.0\ncomment oseg3d synthetic world\n"
        f"element vertex {n}\nproperty float x\nproperty float y\nproperty float z\n"
        "property uchar red\nproperty uchar green\nproperty uchar blue\nproperty uchar alpha\n"
        f"element face {m}\nproperty list uchar int vertex_indices\nend_header\n"
    )
    vdt = np.dtype([("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("r", "u1"), ("g", "u1"), ("b", "u1"), ("a", "u1")])
    v = np.empty(n, vdt)
    v["x"], v["y"], v["z"] = mesh.vertices.T
    v["r"], v["g"], v["b"] = mesh.colors.T
    v["a"] = 255
    fdt = np.dtype([("n", "u1"), ("v", "<i4", (3,))])
    fc = np.empty(m, fdt)
    fc["n"], fc["v"] = 3, mesh.faces
    with open(path, "wb") as f:
        f.write(header.encode("ascii"))
        f.write(v.tobytes())
        f.write(fc.tobytes())
