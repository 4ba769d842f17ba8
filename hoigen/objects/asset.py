"""An object asset: a canonical triangle mesh with an id, a category, a content hash and its NOCS frame.

The mesh stays in its own frame (metres, y-up). Its canonical form is what the PLY file stores:
vertices rounded to float32 values (held as float64), int64 triangle indices and, when the asset has
them, per-vertex RGB colours, so that ``sha256`` (of those PLY bytes) is the same before and after a
save/read round trip. ``mesh_from_source`` records how the source file's coordinates were turned into
the mesh frame (unit scale and the rotation that puts the object's up axis on +y).

``mesh`` is what is rendered. When it is not watertight even after repair, ``watertight_remesh``
holds a closed stand-in (a voxel remesh, see ``hoigen.objects.repair``) and ``sdf_mesh`` returns it:
signed distances, grasping and penetration use ``sdf_mesh``, never an open surface.

The NOCS frame (Wang et al., CVPR 2019) is the mesh's tight bounding box, centred at the origin and
scaled so that its diagonal is 1; ``nocs_from_mesh`` is that similarity as a 4x4 matrix.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field

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


def canonical_mesh(
    vertices: np.ndarray, faces: np.ndarray, colors: np.ndarray | None = None
) -> trimesh.Trimesh:
    """A mesh with float32-exact vertices and int64 faces (and vertex colours), nothing merged or reordered."""
    v = np.asarray(vertices, dtype=np.float64).astype(np.float32).astype(np.float64)
    f = np.asarray(faces, dtype=np.int64).reshape(-1, 3)
    mesh = trimesh.Trimesh(vertices=v, faces=f, process=False, validate=False)
    if colors is not None:
        mesh.visual = trimesh.visual.ColorVisuals(mesh, vertex_colors=_rgb(colors, len(v)))
    return mesh


def _rgb(colors: np.ndarray | None, n: int) -> np.ndarray | None:
    if colors is None:
        return None
    c = np.asarray(colors)
    if c.shape != (n, 3) and c.shape != (n, 4):
        raise ValueError(f"vertex colours must be ({n}, 3) or ({n}, 4), got {c.shape}")
    return np.ascontiguousarray(c[:, :3], dtype=np.uint8)


def mesh_colors(mesh: trimesh.Trimesh) -> np.ndarray | None:
    """A mesh's per-vertex RGB colours (V, 3) uint8, or None when it has none."""
    visual = getattr(mesh, "visual", None)
    if visual is None or getattr(visual, "kind", None) != "vertex":
        return None
    return np.ascontiguousarray(np.asarray(visual.vertex_colors)[:, :3], dtype=np.uint8)


def mesh_bytes(mesh: trimesh.Trimesh, colors: np.ndarray | None = None) -> bytes:
    """The canonical PLY bytes of a mesh (what ``save_objects`` writes)."""
    return ply_bytes(mesh.vertices, mesh.faces, colors)


def mesh_sha256(mesh: trimesh.Trimesh, colors: np.ndarray | None = None) -> str:
    """sha256 (hex) of the canonical PLY bytes."""
    return hashlib.sha256(mesh_bytes(mesh, colors)).hexdigest()


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
    millimetre mesh was converted to metres, else 1.0); ``up`` is the source file's axis that became
    +y; ``mesh_from_source`` is that scale and rotation as a 4x4 (mesh = M @ source point).
    ``colors`` are per-vertex RGB (V, 3) uint8 or None. ``watertight_remesh`` is the closed stand-in
    used for signed distance when ``mesh`` is not watertight (None otherwise). ``repairs`` lists, one
    short phrase each, what loading changed (merged vertices, filled holes, simplified, ...).
    ``scale_from`` says where ``unit_scale`` came from (``auto mm``, ``--units in``, ``mapping scale``
    ...; see ``hoigen.objects.units``), empty for procedural objects.
    """

    id: str
    category: str
    mesh: trimesh.Trimesh
    sha256: str
    source: str
    nocs_from_mesh: np.ndarray
    unit_scale: float = 1.0
    colors: np.ndarray | None = None
    watertight_remesh: trimesh.Trimesh | None = None
    up: str = "+y"
    mesh_from_source: np.ndarray = field(default_factory=lambda: np.eye(4))
    repairs: tuple[str, ...] = ()
    scale_from: str = ""

    def __post_init__(self) -> None:
        check_id(self.id)
        self.nocs_from_mesh = np.asarray(self.nocs_from_mesh, dtype=np.float64).reshape(4, 4)
        self.mesh_from_source = np.asarray(self.mesh_from_source, dtype=np.float64).reshape(4, 4)
        self.repairs = tuple(self.repairs)

    @classmethod
    def create(
        cls,
        object_id: str,
        category: str,
        vertices: np.ndarray,
        faces: np.ndarray,
        source: str,
        unit_scale: float = 1.0,
        *,
        colors: np.ndarray | None = None,
        watertight_remesh: trimesh.Trimesh | None = None,
        up: str = "+y",
        mesh_from_source: np.ndarray | None = None,
        repairs: tuple[str, ...] | list[str] = (),
        scale_from: str = "",
    ) -> ObjectAsset:
        """Canonicalise the geometry, then fill ``sha256`` and ``nocs_from_mesh`` from it."""
        rgb = _rgb(colors, len(np.asarray(vertices).reshape(-1, 3)))
        mesh = canonical_mesh(vertices, faces, rgb)
        remesh = None
        if watertight_remesh is not None:
            remesh = canonical_mesh(watertight_remesh.vertices, watertight_remesh.faces)
        if mesh_from_source is None:
            mesh_from_source = np.diag([float(unit_scale)] * 3 + [1.0])
        return cls(
            id=check_id(object_id),
            category=category,
            mesh=mesh,
            sha256=mesh_sha256(mesh, rgb),
            source=source,
            nocs_from_mesh=nocs_transform(mesh),
            unit_scale=float(unit_scale),
            colors=rgb,
            watertight_remesh=remesh,
            up=up,
            mesh_from_source=mesh_from_source,
            repairs=tuple(repairs),
            scale_from=scale_from,
        )

    @property
    def watertight(self) -> bool:
        return bool(self.mesh.is_watertight)

    @property
    def sdf_mesh(self) -> trimesh.Trimesh:
        """The closed mesh for signed distance: ``watertight_remesh`` when there is one, else ``mesh``."""
        return self.watertight_remesh if self.watertight_remesh is not None else self.mesh

    @property
    def sdf_source(self) -> str:
        """Which mesh ``sdf_mesh`` is: ``"mesh"`` or ``"remesh"``."""
        return "mesh" if self.watertight_remesh is None else "remesh"

    def ply_bytes(self) -> bytes:
        """The canonical PLY bytes of ``mesh`` with its colours (their sha256 is ``sha256``)."""
        return mesh_bytes(self.mesh, self.colors)

    def nocs_vertices(self) -> np.ndarray:
        """The mesh vertices in the NOCS frame (inside the centred box of diagonal 1)."""
        t = self.nocs_from_mesh
        return self.mesh.vertices @ t[:3, :3].T + t[:3, 3]
