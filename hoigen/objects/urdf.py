"""URDF object files: the visual meshes of an object's first link, with their scale and origin.

A URDF (ROS's robot description; YCB, pybullet and many object sets ship one per object) names its
geometry as ``<link><visual><origin xyz rpy/><geometry><mesh filename scale/></geometry></visual>``.
The object is the first link that has visual meshes; all of that link's visual meshes are joined,
each scaled (``scale="sx sy sz"``, default 1) and placed by its visual ``origin`` (``rpy`` fixed-axis
roll, pitch, yaw). URDF lengths are metres and its up axis is +z, like every non-glTF mesh here.
``package://pkg/path`` and ``file://`` names are looked up beside the URDF file (and for a package
path, below its parent folders). The XML is read with ``defusedxml`` (no entity expansion, no
external references). Collision geometry, joints, other links and primitive shapes are ignored.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from defusedxml import ElementTree
from defusedxml.common import DefusedXmlException
from scipy.spatial.transform import Rotation

from hoigen.errors import HoigenError
from hoigen.objects.repair import UnusableMesh
from hoigen.trust import MiB, check_file_size

URDF_MAX_BYTES = 4 * MiB  # an object's URDF is a few kB; the meshes it names have their own caps


@dataclass(frozen=True)
class UrdfMesh:
    """One visual mesh of a URDF: its file, per-axis scale and 4x4 origin (mesh file -> link frame)."""

    path: Path
    scale: tuple[float, float, float]
    origin: np.ndarray

    def transform(self, vertices: np.ndarray) -> np.ndarray:
        """The mesh file's vertices in the link frame: scaled, then placed by the origin."""
        v = np.asarray(vertices, dtype=np.float64) * np.asarray(self.scale)
        return v @ self.origin[:3, :3].T + self.origin[:3, 3]


def _floats(text: str | None, n: int, default: float, where: str) -> tuple[float, ...]:
    if text is None or not text.strip():
        return (default,) * n
    try:
        values = tuple(float(x) for x in text.split())
    except ValueError:
        values = ()
    if len(values) == 1 and n == 3 and where.endswith("scale"):
        values = values * 3
    if len(values) != n or not np.isfinite(values).all():
        raise UnusableMesh(f"{where}: {text!r} is not {n} numbers; fix the URDF")
    return values


def _resolve(filename: str, urdf: Path) -> Path:
    name = filename.strip()
    candidates = []
    if name.startswith("file://"):
        candidates.append(Path(name[len("file://") :]))
    elif name.startswith("package://"):
        rest = Path(name[len("package://") :])
        inner = Path(*rest.parts[1:]) if len(rest.parts) > 1 else rest
        for folder in (urdf.parent, *urdf.parent.parents):
            candidates += [folder / rest, folder / inner]
    else:
        candidates.append(Path(name) if Path(name).is_absolute() else urdf.parent / name)
    for c in candidates:
        if c.is_file():
            return c
    raise UnusableMesh(f"{urdf}: the mesh {filename!r} it names was not found beside it; copy it along or fix the path")


def read_urdf(path: Path) -> list[UrdfMesh]:
    """The visual meshes of the first link with any (see the module), or ``UnusableMesh``."""
    path = Path(path)
    try:
        check_file_size(path, URDF_MAX_BYTES, "URDF file", "an object's URDF is a few kB; fix or remove it")
    except HoigenError as exc:
        raise UnusableMesh(str(exc)) from None
    try:
        root = ElementTree.fromstring(path.read_bytes(), forbid_dtd=True)
    except (DefusedXmlException, ElementTree.ParseError, OSError) as exc:
        raise UnusableMesh(f"{path}: cannot be read as URDF ({type(exc).__name__}: {exc}); fix or remove it") from exc
    if root.tag != "robot":
        raise UnusableMesh(f"{path}: not a URDF (the root element is <{root.tag}>, not <robot>); fix or remove it")
    for link in root.iter("link"):
        meshes = []
        for visual in link.findall("visual"):
            mesh = visual.find("geometry/mesh")
            if mesh is None or not mesh.get("filename"):
                continue
            where = f"{path} link {link.get('name', '?')!r}"
            origin = np.eye(4)
            element = visual.find("origin")
            if element is not None:
                origin[:3, 3] = _floats(element.get("xyz"), 3, 0.0, f"{where} origin xyz")
                rpy = _floats(element.get("rpy"), 3, 0.0, f"{where} origin rpy")
                origin[:3, :3] = Rotation.from_euler("xyz", rpy).as_matrix()
            scale = _floats(mesh.get("scale"), 3, 1.0, f"{where} mesh scale")
            if min(abs(s) for s in scale) == 0:
                raise UnusableMesh(f"{where}: mesh scale {mesh.get('scale')!r} has a zero; fix the URDF")
            meshes.append(UrdfMesh(_resolve(mesh.get("filename"), path), scale, origin))
        if meshes:
            return meshes
    raise UnusableMesh(f"{path}: names no visual mesh (<visual><geometry><mesh filename=...>); fix or remove it")


def referenced_meshes(path: Path) -> list[Path]:
    """The mesh files a URDF uses ([] when it cannot be read: loading reports that)."""
    try:
        return [m.path for m in read_urdf(path)]
    except UnusableMesh:
        return []
