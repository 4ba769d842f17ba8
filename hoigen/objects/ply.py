"""The canonical mesh file: a minimal binary little-endian PLY with float32 vertices and triangles.

hoigen writes the bytes itself (not through a library) so that a mesh's sha256 depends only on its
vertices and faces, never on a library version or a cached attribute. The file is plain PLY that
trimesh, Open3D, MeshLab and Blender read. ``read_ply_bytes`` parses exactly this layout back.
"""

from __future__ import annotations

import numpy as np

_HEADER = (
    "ply\n"
    "format binary_little_endian 1.0\n"
    "comment hoigen canonical mesh (metres, y-up)\n"
    "element vertex {nv}\n"
    "property float x\n"
    "property float y\n"
    "property float z\n"
    "element face {nf}\n"
    "property list uchar int vertex_indices\n"
    "end_header\n"
)
_FACE_DTYPE = np.dtype([("n", "u1"), ("i", "<i4", (3,))])


def ply_bytes(vertices: np.ndarray, faces: np.ndarray) -> bytes:
    """Binary PLY bytes of a triangle mesh (vertices stored as float32)."""
    v = np.ascontiguousarray(vertices, dtype="<f4")
    f = np.asarray(faces)
    rec = np.empty(len(f), dtype=_FACE_DTYPE)
    rec["n"] = 3
    rec["i"] = f
    header = _HEADER.format(nv=len(v), nf=len(f)).encode("ascii")
    return header + v.tobytes() + rec.tobytes()


def read_ply_bytes(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Vertices (float64 holding float32 values) and faces (int64) of a file from ``ply_bytes``.

    Raises ``ValueError`` when the bytes are not in that exact layout.
    """
    end = data.find(b"end_header\n")
    if not data.startswith(b"ply\n") or end < 0:
        raise ValueError("not a PLY file")
    header = data[:end].decode("ascii", errors="replace").splitlines()
    counts = {}
    for line in header:
        parts = line.split()
        if parts[:1] == ["element"] and len(parts) == 3:
            counts[parts[1]] = int(parts[2])
    expected = _HEADER.format(nv=counts.get("vertex", -1), nf=counts.get("face", -1)).encode("ascii")
    if data[: end + len(b"end_header\n")] != expected:
        raise ValueError("not a hoigen canonical PLY (unexpected header)")
    nv, nf = counts["vertex"], counts["face"]
    body = data[len(expected) :]
    if len(body) != nv * 12 + nf * _FACE_DTYPE.itemsize:
        raise ValueError("PLY body has the wrong length (truncated file?)")
    v = np.frombuffer(body, dtype="<f4", count=nv * 3).reshape(nv, 3).astype(np.float64)
    rec = np.frombuffer(body, dtype=_FACE_DTYPE, count=nf, offset=nv * 12)
    if nf and not np.all(rec["n"] == 3):
        raise ValueError("PLY has non-triangle faces")
    return v, rec["i"].astype(np.int64)
