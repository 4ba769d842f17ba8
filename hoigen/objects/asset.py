"""An object asset: a canonical triangle mesh with an id, a category, a content hash and its NOCS frame.

The mesh stays in its own frame (metres, y-up). Its canonical form is geometry only: vertices
rounded to float32 values (held as float64) and int64 triangle indices, exactly what the PLY file
stores, so that ``sha256`` (of those PLY bytes) is the same before and after a save/read round trip.

The NOCS frame (Wang et al., CVPR 2019) is the mesh's tight bounding box, centred at the origin and
scaled so that its diagonal is 1; ``nocs_from_mesh`` is that similarity as a 4x4 matrix.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

import numpy as np
import trimesh

from hoigen.errors import HoigenError
from hoigen.objects.ply import ply_bytes

ID_PATTERN = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")


def slugify(name: str) -> str:
    """An object id from any name: lower case, runs of other characters become one ``-``.

    ``"002_master_chef_can"`` -> ``"002-master-chef-can"``. Returns ``""`` when nothing is left.
    """
    return re.sub(r"[^a-z0-9]+", "-", str(name).lower()).strip("-")


def check_id(object_id: str) -> str:
    """Return ``object_id`` if it is a valid id (``[a-z0-9-]``, no dot or underscore), else raise."""
    if not isinstance(object_id, str) or not ID_PATTERN.match(object_id):
        raise HoigenError(
            f"object id {object_id!r} is not valid; ids are lower-case letters, digits and single "
            "'-' (no dot or underscore, they break WebDataset keys)"
        )
    return object_id


def canonical_mesh(vertices: np.ndarray, faces: np.ndarray) -> trimesh.Trimesh:
    """A geometry-only mesh with float32-exact vertices and int64 faces, nothing merged or reordered."""
    v = np.asarray(vertices, dtype=np.float64).astype(np.float32).astype(np.float64)
    f = np.asarray(faces, dtype=np.int64).reshape(-1, 3)
    return trimesh.Trimesh(vertices=v, faces=f, process=False, validate=False)


def mesh_bytes(mesh: trimesh.Trimesh) -> bytes:
    """The canonical PLY bytes of a mesh (what ``save_objects`` writes)."""
    return ply_bytes(mesh.vertices, mesh.faces)


def mesh_sha256(mesh: trimesh.Trimesh) -> str:
    """sha256 (hex) of the canonical PLY bytes."""
    return hashlib.sha256(mesh_bytes(mesh)).hexdigest()


def nocs_transform(mesh: trimesh.Trimesh) -> np.ndarray:
    """4x4 similarity mesh frame -> NOCS frame: bbox centre to the origin, bbox diagonal scaled to 1."""
    lo, hi = np.asarray(mesh.bounds, dtype=np.float64)
    diag = float(np.linalg.norm(hi - lo))
    if not np.isfinite(diag) or diag <= 0:
        raise HoigenError("mesh has an empty or degenerate bounding box; cannot define its NOCS frame")
    s = 1.0 / diag
    t = np.eye(4)
    t[:3, :3] *= s
    t[:3, 3] = -s * (lo + hi) / 2.0
    return t


@dataclass
class ObjectAsset:
    """One object: ``mesh`` in its mesh frame (metres, y-up) and the facts later stages record.

    ``unit_scale`` is the factor already applied to the source file's coordinates (0.001 when a
    millimetre mesh was converted to metres, else 1.0).
    """

    id: str
    category: str
    mesh: trimesh.Trimesh
    sha256: str
    source: str
    nocs_from_mesh: np.ndarray
    unit_scale: float = 1.0

    def __post_init__(self) -> None:
        check_id(self.id)
        self.nocs_from_mesh = np.asarray(self.nocs_from_mesh, dtype=np.float64).reshape(4, 4)

    @classmethod
    def create(
        cls,
        object_id: str,
        category: str,
        vertices: np.ndarray,
        faces: np.ndarray,
        source: str,
        unit_scale: float = 1.0,
    ) -> ObjectAsset:
        """Canonicalise the geometry, then fill ``sha256`` and ``nocs_from_mesh`` from it."""
        mesh = canonical_mesh(vertices, faces)
        return cls(
            id=check_id(object_id),
            category=category,
            mesh=mesh,
            sha256=mesh_sha256(mesh),
            source=source,
            nocs_from_mesh=nocs_transform(mesh),
            unit_scale=float(unit_scale),
        )

    @property
    def watertight(self) -> bool:
        return bool(self.mesh.is_watertight)

    def nocs_vertices(self) -> np.ndarray:
        """The mesh vertices in the NOCS frame (inside the centred box of diagonal 1)."""
        t = self.nocs_from_mesh
        return self.mesh.vertices @ t[:3, :3].T + t[:3, 3]
