"""The canonical mesh file: a minimal binary little-endian PLY with float32 vertices and triangles.

hoigen writes the bytes itself (not through a library) so that a mesh's sha256 depends only on its
vertices, faces and (when it has them) per-vertex RGB colours, never on a library version or a
cached attribute. The file is plain PLY that trimesh, Open3D, MeshLab and Blender read.
``read_ply_bytes`` parses exactly these two layouts (with or without ``red green blue``) back.
"""

from __future__ import annotations

import numpy as np

_HEAD = (
    "ply\n"
    "format binary_little_endian 1.0\n"
    "comment hoigen canonical mesh (metres, y-up)\n"
    "element vertex {nv}\n"
    "property float x\n"
    "property float y\n"
    "property float z\n"
)
_COLOR = "property uchar red\nproperty uchar green\nproperty uchar blue\n"
_TAIL = "element face {nf}\nproperty list uchar int vertex_indices\nend_header\n"
_FACE_DTYPE = np.dtype([("n", "u1"), ("i", "<i4", (3,))])
_VERTEX = np.dtype([("p", "<f4", (3,))])
_VERTEX_RGB = np.dtype([("p", "<f4", (3,)), ("c", "u1", (3,))])


def _header(nv: int, nf: int, color: bool) -> bytes:
    return (_HEAD + (_COLOR if color else "") + _TAIL).format(nv=nv, nf=nf).encode("ascii")


def ply_bytes(vertices: np.ndarray, faces: np.ndarray, colors: np.ndarray | None = None) -> bytes:
    """Binary PLY bytes of a triangle mesh (vertices as float32, optional (V, 3) uint8 colours)."""
    v = np.asarray(vertices)
    f = np.asarray(faces)
    rec = np.empty(len(f), dtype=_FACE_DTYPE)
    rec["n"] = 3
    rec["i"] = f
    vert = np.empty(len(v), dtype=_VERTEX if colors is None else _VERTEX_RGB)
    vert["p"] = v
    if colors is not None:
        vert["c"] = np.asarray(colors)[:, :3]
    return _header(len(v), len(f), colors is not None) + vert.tobytes() + rec.tobytes()


def read_ply_bytes_colors(data: bytes) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Vertices (float64 holding float32 values), faces (int64) and colours ((V, 3) uint8 or None).

    Raises ``ValueError`` when the bytes are not in one of the layouts ``ply_bytes`` writes.
    """
    end = data.find(b"end_header\n")
    if not data.startswith(b"ply\n") or end < 0:
        raise ValueError("not a PLY file")
    header = data[:end].decode("ascii", errors="replace").splitlines()
    counts = {}
    for line in header:
        parts = line.split()
        if parts[:1] == ["element"] and len(parts) == 3 and parts[2].isdigit():
            counts[parts[1]] = int(parts[2])
    nv, nf = counts.get("vertex", -1), counts.get("face", -1)
    head = data[: end + len(b"end_header\n")]
    color = head == _header(nv, nf, True)
    if not color and head != _header(nv, nf, False):
        raise ValueError("not a hoigen canonical PLY (unexpected header)")
    vdt = _VERTEX_RGB if color else _VERTEX
    body = data[len(head) :]
    if len(body) != nv * vdt.itemsize + nf * _FACE_DTYPE.itemsize:
        raise ValueError("PLY body has the wrong length (truncated file?)")
    vert = np.frombuffer(body, dtype=vdt, count=nv)
    rec = np.frombuffer(body, dtype=_FACE_DTYPE, count=nf, offset=nv * vdt.itemsize)
    if nf and not np.all(rec["n"] == 3):
        raise ValueError("PLY has non-triangle faces")
    colors = np.array(vert["c"], dtype=np.uint8) if color else None
    return vert["p"].astype(np.float64), rec["i"].astype(np.int64), colors


def read_ply_bytes(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Vertices (float64 holding float32 values) and faces (int64) of a file from ``ply_bytes``."""
    v, f, _ = read_ply_bytes_colors(data)
    return v, f
