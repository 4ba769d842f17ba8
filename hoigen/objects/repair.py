"""Validate and repair a user's triangle mesh so every later stage can trust it.

``repair_mesh`` runs these steps in order and either returns a ``RepairedMesh`` (with a short
phrase for each change in ``repairs`` and a one-line ``warnings`` entry for what the user should
know) or raises ``UnusableMesh`` with a one-line reason (the loader then skips the file):

1. **Empty**: no vertices or no faces -> unusable.
2. **Non-finite**: faces that use NaN/inf vertices -> unusable (the shape is corrupt; guessing
   it would poison every annotation). NaN vertices that no face uses are dropped.
3. **Units**: the factor to metres from the largest bounding-box side, decided by ``sizer``
   (default: ``hoigen.objects.units.choose_scale`` for the category ``object``); a guess other than
   "metres fit" is a warning naming the factor and how to override it.
4. **Huge**: above ``face_budget`` faces the mesh is simplified with quadric decimation
   (``fast_simplification``). Far above it (> ``CLUSTER_FACTOR`` x budget) a vertex-clustering pass
   first cuts it to ~ that many faces in well under a second, so 5 million faces take seconds.
5. **Clean**: duplicate vertices merged (OBJ seams), degenerate (repeated-index or zero-area) and
   duplicate faces removed, unreferenced vertices dropped; nothing left -> unusable.
6. **Watertight**: trimesh's repair (consistent winding, outward normals, small holes filled).
   If the mesh is still open or non-manifold, ``voxel_remesh`` builds a closed stand-in for signed
   distance (surface voxels closed by one voxel, interior filled, marching cubes); the repaired
   original stays the render mesh and ``remesh`` records the stand-in.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import trimesh
from scipy import ndimage
from scipy.spatial import cKDTree

from hoigen.errors import HoigenError
from hoigen.objects.units import ScaleChoice, choose_scale

FACE_BUDGET = 200_000  # faces kept for rendering and grasping (YCB google_16k meshes have ~30k)
CLUSTER_FACTOR = 2  # above budget x this, vertex clustering runs before quadric decimation
REMESH_RESOLUTION = 64  # voxels along the longest bounding-box side of the watertight remesh
REMESH_FACES = 40_000
CLOSING_VOXELS = (1, 2, 4, 8, 12, 16)  # closing radii tried in turn (closes holes up to ~2x as many voxels)


class UnusableMesh(HoigenError):
    """A mesh that cannot be used; the message is the one-line reason."""


@dataclass
class RepairedMesh:
    """The outcome of ``repair_mesh``: geometry in metres and what was done to it."""

    vertices: np.ndarray
    faces: np.ndarray
    colors: np.ndarray | None
    unit_scale: float
    remesh: trimesh.Trimesh | None = None
    repairs: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    scale_from: str = "auto m"  # where unit_scale came from (hoigen.objects.units.ScaleChoice.source)
    source_extent: float = 0.0  # largest bounding-box side in the file's own units


def repair_mesh(
    vertices: np.ndarray,
    faces: np.ndarray,
    colors: np.ndarray | None = None,
    *,
    name: str = "mesh",
    face_budget: int = FACE_BUDGET,
    scale: float | None = None,
    sizer: Callable[[float], ScaleChoice] | None = None,
) -> RepairedMesh:
    """Validate and repair one mesh (see the module docstring).

    ``scale`` forces the factor to metres; else ``sizer(largest side in file units)`` decides it
    (default: ``choose_scale`` for a mesh of category ``object``).

    Raises ``UnusableMesh("<name>: <reason>; <what to do>")`` when the mesh cannot be used.
    """
    v = np.asarray(vertices, dtype=np.float64).reshape(-1, 3)
    f = np.asarray(faces, dtype=np.int64).reshape(-1, 3)
    c = None if colors is None else np.asarray(colors, dtype=np.uint8)[:, :3]
    repairs: list[str] = []
    warnings: list[str] = []
    if len(v) == 0 or len(f) == 0:
        raise UnusableMesh(f"{name}: the mesh has no faces; fix or remove it")
    if f.min() < 0 or f.max() >= len(v):
        raise UnusableMesh(f"{name}: faces index vertices that do not exist; fix or remove it")
    finite = np.isfinite(v).all(axis=1)
    if not finite.all():
        bad = int((~finite[f]).any(axis=1).sum())
        if bad:
            raise UnusableMesh(
                f"{name}: {int((~finite).sum())} vertices have NaN or infinite coordinates "
                f"({bad} faces use them); fix or remove it"
            )
        v, f, c = _keep_vertices(v, f, c, finite)
        repairs.append(f"dropped {int((~finite).sum())} unused non-finite vertices")

    used = np.zeros(len(v), dtype=bool)
    used[f.reshape(-1)] = True  # (np.unique on 10^7 indices takes seconds)
    extent = float(np.ptp(v[used], axis=0).max())
    if not extent > 0:
        raise UnusableMesh(f"{name}: the mesh is a single point (zero-size bounding box); fix or remove it")
    if scale is not None:
        choice = ScaleChoice(float(scale), "given")
    else:
        choice = (sizer or (lambda e: choose_scale(e, "object", name=name)))(extent)
    s = choice.factor
    if choice.warning:
        warnings.append(choice.warning)
    if s != 1.0:
        v = v * s
        repairs.append(f"scaled by {s:.6g} ({choice.source})")

    if len(f) > face_budget:
        n0 = len(f)
        v, f, c = simplify(v, f, c, face_budget)
        repairs.append(f"simplified {n0} -> {len(f)} faces")
        warnings.append(f"{name}: {n0} faces is above the budget of {face_budget}; simplified to {len(f)}")

    v, f, c, cleaned = clean(v, f, c)
    repairs += cleaned
    if len(f) == 0:
        raise UnusableMesh(f"{name}: every face is degenerate (zero area); fix or remove it")

    mesh = trimesh.Trimesh(v, f, process=False, validate=False)
    remesh = None
    if not (mesh.is_watertight and mesh.is_winding_consistent):
        fixed, did = close_mesh(mesh)
        repairs += did
        if fixed.is_watertight:
            mesh = fixed
            c = carry_colors(v, c, mesh.vertices)
        else:
            remesh = voxel_remesh(fixed)
            if not remesh.is_watertight:
                raise UnusableMesh(f"{name}: could not be made watertight, even by a voxel remesh; fix or remove it")
            repairs.append(f"watertight voxel remesh for signed distance ({len(remesh.faces)} faces)")
            warnings.append(
                f"{name}: not watertight after repair (open or non-manifold); signed distance uses a "
                f"voxel remesh (pitch {voxel_pitch(fixed) * 1000:.1f} mm), rendering the repaired original"
            )
            mesh = fixed
            c = carry_colors(v, c, mesh.vertices)
    if mesh.is_watertight and mesh.volume < 0:
        mesh.invert()
        repairs.append("turned normals outward")
    return RepairedMesh(
        np.asarray(mesh.vertices, dtype=np.float64),
        np.asarray(mesh.faces, dtype=np.int64),
        c,
        s,
        remesh,
        repairs,
        warnings,
        choice.source,
        extent,
    )


def _keep_vertices(v: np.ndarray, f: np.ndarray, c: np.ndarray | None, keep: np.ndarray):
    """Drop the vertices where ``keep`` is False (no face may use them) and renumber the faces."""
    new_index = np.cumsum(keep) - 1
    return v[keep], new_index[f], None if c is None else c[keep]


def clean(v: np.ndarray, f: np.ndarray, c: np.ndarray | None):
    """Merge duplicate vertices, drop degenerate/duplicate faces and unused vertices.

    Returns (vertices, faces, colours, [phrases of what changed]).
    """
    did = []
    nv = len(v)
    # exact duplicates after rounding to 1e-8 m (OBJ writers split vertices at texture seams)
    key = np.round(v, 8)
    _, first, inverse = np.unique(key, axis=0, return_index=True, return_inverse=True)
    inverse = inverse.reshape(-1)
    if len(first) < nv:
        order = np.argsort(first)  # keep the first occurrence's order: deterministic and stable
        rank = np.empty_like(order)
        rank[order] = np.arange(len(order))
        v, c = v[first[order]], None if c is None else c[first[order]]
        f = rank[inverse][f]
        did.append(f"merged {nv - len(v)} duplicate vertices")
    tri = v[f]
    area2 = np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    scale = max(float(np.ptp(v, axis=0).max()), 1e-12)
    good = (f[:, 0] != f[:, 1]) & (f[:, 1] != f[:, 2]) & (f[:, 0] != f[:, 2]) & (area2 > 1e-14 * scale**2)
    if not good.all():
        did.append(f"removed {int((~good).sum())} degenerate faces")
        f = f[good]
    _, unique_rows = np.unique(np.sort(f, axis=1), axis=0, return_index=True)
    if len(unique_rows) < len(f):
        did.append(f"removed {len(f) - len(unique_rows)} duplicate faces")
        f = f[np.sort(unique_rows)]
    used = np.zeros(len(v), bool)
    used[f.reshape(-1)] = True
    if not used.all():
        v, f, c = _keep_vertices(v, f, c, used)
        did.append(f"dropped {int((~used).sum())} unused vertices")
    return v, f, c, did


def close_mesh(mesh: trimesh.Trimesh) -> tuple[trimesh.Trimesh, list[str]]:
    """trimesh's repair on a copy: consistent winding, outward normals, small holes filled."""
    m = mesh.copy()
    did = []
    if not m.is_winding_consistent:
        flipped = fix_winding(m)
        if flipped:
            did.append(f"flipped {flipped} faces to make the winding consistent")
    if not m.is_watertight:
        n = len(m.faces)
        trimesh.repair.fill_holes(m)
        if len(m.faces) > n:
            did.append(f"filled holes with {len(m.faces) - n} faces")
    if m.is_watertight:
        trimesh.repair.fix_inversion(m)
    return m, did


def fix_winding(mesh: trimesh.Trimesh) -> int:
    """Orient every face like its neighbours (in place); return how many faces were flipped.

    trimesh's ``fix_winding`` walks faces in Python (minutes for 10^5 faces); this does one
    breadth-first search per connected patch with scipy and a linear pass for the flip parity.
    Two faces sharing an edge agree when they traverse it in opposite directions.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import breadth_first_order, connected_components

    faces = np.asarray(mesh.faces)
    n = len(faces)
    adj = np.asarray(mesh.face_adjacency)
    if n == 0 or len(adj) == 0:
        return 0
    edges = np.asarray(mesh.face_adjacency_edges)
    # direction in which each face of the pair traverses the shared edge (+1: a->b as stored)
    def direction(face_ids):
        f = faces[face_ids]
        a = (f == edges[:, :1]).argmax(axis=1)
        return np.where(f[np.arange(len(f)), (a + 1) % 3] == edges[:, 1], 1, -1)

    disagree = (direction(adj[:, 0]) == direction(adj[:, 1])).astype(np.int8)
    rel = coo_matrix(
        (np.concatenate([disagree, disagree]) + 1, (np.concatenate(adj.T[::-1]), np.concatenate(adj.T))),
        shape=(n, n),
    ).tocsr()
    _, labels = connected_components(rel, directed=False)
    sizes = np.bincount(labels)
    _, roots = np.unique(labels, return_index=True)
    par = [0] * n
    for root in roots[sizes[labels[roots]] > 1].tolist():
        order, pred = breadth_first_order(rel, root, directed=False, return_predecessors=True)
        children = order[1:]
        parents = pred[children]
        step = np.asarray(rel[parents, children]).ravel().astype(np.int8) - 1
        for c, p_, s_ in zip(children.tolist(), parents.tolist(), step.tolist(), strict=True):
            par[c] = par[p_] ^ s_
    parity = np.asarray(par, dtype=np.int8)
    flip = parity.astype(bool)
    if flip.any():
        new = faces.copy()
        new[flip] = new[flip][:, ::-1]
        mesh.faces = new
    return int(flip.sum())


def voxel_pitch(mesh: trimesh.Trimesh, resolution: int = REMESH_RESOLUTION) -> float:
    return float(np.ptp(mesh.vertices, axis=0).max()) / resolution


def voxel_remesh(mesh: trimesh.Trimesh, resolution: int = REMESH_RESOLUTION) -> trimesh.Trimesh:
    """A closed surface around ``mesh`` (open or non-manifold) from a voxel grid.

    Surface voxels (from dense, deterministic surface samples) are closed morphologically with
    growing radii (``CLOSING_VOXELS``) until they enclose an interior, which is filled; marching
    cubes on the lightly smoothed occupancy gives the surface. Deviation from the input surface is
    about one voxel (``voxel_pitch``) except over holes, which get a cap that may sag into the hole
    by up to the closing radius. A surface that encloses
    nothing even then (a single open sheet, a bowl scanned without its inside) becomes a closed
    shell about three voxels thick.
    """
    from skimage.measure import marching_cubes

    pitch = voxel_pitch(mesh, resolution)
    pad = (max(CLOSING_VOXELS) + 3) * pitch  # room for the closing, so the grid border never cuts it
    lo = mesh.vertices.min(axis=0) - pad
    dims = np.ceil((mesh.vertices.max(axis=0) + pad - lo) / pitch).astype(int) + 1
    n = int(min(1_000_000, max(20_000, 8 * mesh.area / pitch**2)))
    points, _ = trimesh.sample.sample_surface(mesh, n, seed=0)
    points = np.vstack([points, mesh.vertices])
    idx = np.clip(np.floor((points - lo) / pitch).astype(int), 0, dims - 1)
    surface = np.zeros(dims, bool)
    surface[idx[:, 0], idx[:, 1], idx[:, 2]] = True
    ball = ndimage.generate_binary_structure(3, 1)
    for k in CLOSING_VOXELS:  # close ever larger holes until the surface encloses an interior
        shell = ndimage.binary_dilation(surface, ball, iterations=k)
        solid = ndimage.binary_fill_holes(shell)
        if solid.sum() > 1.02 * shell.sum():
            solid = ndimage.binary_erosion(solid, ball, iterations=k, border_value=0) | surface
            break
    else:  # an open sheet that encloses nothing: a closed shell around it
        solid = ndimage.binary_dilation(surface, ball)
    field_ = ndimage.gaussian_filter(solid.astype(np.float32), 0.6)
    verts, faces, _, _ = marching_cubes(field_, level=0.5, spacing=(pitch, pitch, pitch))
    out = trimesh.Trimesh(verts + lo, faces, process=True)
    if len(out.faces) > REMESH_FACES:
        import fast_simplification

        p, fa = fast_simplification.simplify(
            out.vertices.astype(np.float32), out.faces.astype(np.int32), target_count=REMESH_FACES
        )
        small = trimesh.Trimesh(p.astype(np.float64), fa, process=True)
        if small.is_watertight and small.is_winding_consistent:
            out = small
    trimesh.repair.fix_normals(out)
    if out.volume < 0:
        out.invert()
    return out


def simplify(v: np.ndarray, f: np.ndarray, c: np.ndarray | None, budget: int):
    """Decimate to at most ``budget`` faces (vertex clustering first when far above it)."""
    import fast_simplification

    v0 = v
    if len(f) > CLUSTER_FACTOR * budget:
        v, f = cluster_vertices(v, f, CLUSTER_FACTOR * budget)
    if len(f) > budget:
        p, fa = fast_simplification.simplify(v.astype(np.float32), f.astype(np.int32), target_count=budget)
        v, f = np.asarray(p, dtype=np.float64), np.asarray(fa, dtype=np.int64)
    return v, f, carry_colors(v0, c, v)


def cluster_vertices(v: np.ndarray, f: np.ndarray, target_faces: int) -> tuple[np.ndarray, np.ndarray]:
    """Vertex clustering on a uniform grid sized for about ``target_faces`` faces; O(n), seconds for 5M faces.

    Each occupied cell's vertices collapse to their mean; faces that collapse are dropped.
    """
    tri = v[f[:: max(1, len(f) // 100_000)]]
    area = np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1).sum() / 2
    area *= len(f) / len(tri)
    cell = np.sqrt(area / max(1, target_faces // 2))  # a closed surface has ~2 faces per vertex
    q = np.floor((v - v.min(axis=0)) / cell).astype(np.int64)
    dims = q.max(axis=0) + 1
    key = (q[:, 0] * dims[1] + q[:, 1]) * dims[2] + q[:, 2]
    _, inverse = np.unique(key, return_inverse=True)
    inverse = inverse.reshape(-1)
    count = np.bincount(inverse)
    nv = np.stack([np.bincount(inverse, weights=v[:, k]) for k in range(3)], axis=1) / count[:, None]
    nf = inverse[f]
    keep = (nf[:, 0] != nf[:, 1]) & (nf[:, 1] != nf[:, 2]) & (nf[:, 0] != nf[:, 2])
    return nv, nf[keep]


def carry_colors(old_v: np.ndarray, colors: np.ndarray | None, new_v: np.ndarray) -> np.ndarray | None:
    """Colours for new vertices from the nearest old vertex (None stays None)."""
    if colors is None:
        return None
    if len(old_v) == len(new_v) and np.array_equal(old_v, new_v):
        return colors
    _, nearest = cKDTree(old_v).query(np.asarray(new_v))
    return colors[nearest]
