"""``MeshQuery`` against brute force: every point against every face, parts taken as a union."""

from __future__ import annotations

import numpy as np
import pytest
import trimesh

from hoigen.objects import procedural_objects
from hoigen.objects.geometry import MeshQuery, _closest_on_triangles, winding_number


def _brute(mesh: trimesh.Trimesh, pts: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Nearest distance (n,) of each point to the triangles ``faces`` of ``mesh``, trying them all."""
    tri = np.asarray(mesh.triangles)[faces]
    rep = np.repeat(pts, len(faces), axis=0)
    t = np.tile(tri, (len(pts), 1, 1))
    q, _ = _closest_on_triangles(rep, t[:, 0], t[:, 1], t[:, 2])
    return np.linalg.norm(q - rep, axis=1).reshape(len(pts), len(faces)).min(axis=1)


def _probes(mesh: trimesh.Trimesh, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, len(mesh.vertices), 300)
    near = mesh.vertices[pick] + mesh.vertex_normals[pick] * rng.uniform(-0.005, 0.008, (300, 1))
    surf, _ = trimesh.sample.sample_surface(mesh, 300, seed=seed)
    lo, hi = mesh.bounds
    box = rng.uniform(lo - 0.02, hi + 0.02, size=(300, 3))
    return np.vstack([near, surf + rng.normal(scale=0.003, size=surf.shape), box])


MESHES = {
    "mug": lambda: procedural_objects(["mug"], seed=0)[0].mesh,  # two overlapping closed parts
    "laptop": lambda: procedural_objects(["laptop"], seed=0)[0].mesh,  # two parts, sliver faces
    "can": lambda: procedural_objects(["can"], seed=0)[0].mesh,  # fan caps: faces of two sizes
    "capsule": lambda: trimesh.creation.capsule(height=0.08, radius=0.028),  # long side faces
    "box": lambda: trimesh.creation.box((0.06, 0.11, 0.07)),
}


@pytest.mark.parametrize("name", sorted(MESHES))
def test_mesh_query_matches_brute_force(name: str) -> None:
    mesh = MESHES[name]()
    query = MeshQuery(mesh)
    pts = _probes(mesh, seed=5)
    q, d, f = query.closest_point(pts)
    exact = _brute(mesh, pts, np.arange(len(mesh.faces)))
    np.testing.assert_allclose(d, exact, rtol=0, atol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(q - pts, axis=1), d, rtol=0, atol=1e-12)
    # the reported face really holds the closest point
    tri = np.asarray(mesh.triangles)[f]
    qf, _ = _closest_on_triangles(pts, tri[:, 0], tri[:, 1], tri[:, 2])
    np.testing.assert_allclose(qf, q, rtol=0, atol=1e-12)

    sd = query.signed_distance(pts)
    if query.parts:  # a union: the largest signed distance over the parts, each signed by its own winding
        per_part = []
        for part in query.parts:
            dist = _brute(mesh, pts, part)
            sub = trimesh.Trimesh(mesh.vertices, mesh.faces[part], process=False)
            inside = winding_number(sub, pts) > 0.5
            per_part.append(np.where(inside, dist, -dist))
        expected = np.max(per_part, axis=0)
        assert len(query.parts) == 2
    else:
        expected = np.where(winding_number(mesh, pts) > 0.5, exact, -exact)
    away = np.abs(expected) > 1e-9  # on the surface the sign is moot
    np.testing.assert_allclose(sd[away], expected[away], rtol=0, atol=1e-12)
    assert away.sum() > 0.95 * len(pts) and (sd > 0).sum() > 50 and (sd < 0).sum() > 50


def test_pseudonormals_equal_the_add_at_sums_bit_for_bit() -> None:
    """The bincount scatter gives np.add.at's sums exactly (same order), and the int64 edge keys the
    ids of ``np.unique(axis=0)``."""
    mesh = trimesh.creation.torus(major_radius=0.045, minor_radius=0.015)
    mesh.vertices += np.random.default_rng(0).normal(scale=1e-3, size=mesh.vertices.shape)
    q = MeshQuery(mesh)
    faces = np.asarray(mesh.faces)
    fn = np.asarray(mesh.face_normals)
    angles = np.asarray(mesh.face_angles)
    vn = np.zeros((len(mesh.vertices), 3))
    for k in range(3):
        np.add.at(vn, faces[:, k], fn * angles[:, k : k + 1])
    edges = np.sort(faces[:, [0, 1, 1, 2, 2, 0]].reshape(-1, 2), axis=1)
    _, edge_id = np.unique(edges, axis=0, return_inverse=True)
    edge_id = edge_id.reshape(-1)
    en = np.zeros((edge_id.max() + 1, 3))
    np.add.at(en, edge_id, np.repeat(fn, 3, axis=0))
    assert np.array_equal(q.vertex_pseudonormal, vn)
    assert np.array_equal(q.edge_pseudonormal, en[edge_id].reshape(-1, 3, 3))
