"""The signed-distance grid against exact mesh queries on procedural and trimesh-made objects."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import trimesh

from hoigen.objects import procedural_objects
from hoigen.objects.geometry import signed_distance
from hoigen.objects.sdf import SDFGrid, sdf_grid


def _near_surface(mesh: trimesh.Trimesh, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    p, face = trimesh.sample.sample_surface(mesh, n, seed=seed)
    return p + rng.normal(scale=0.006, size=p.shape), face


MESHES = {
    "can": lambda: procedural_objects(["can"], seed=1)[0].mesh,
    "bowl": lambda: procedural_objects(["bowl"], seed=1)[0].mesh,
    "bottle": lambda: procedural_objects(["bottle"], seed=1)[0].mesh,
    "box": lambda: trimesh.creation.box((0.08, 0.05, 0.12)),
    "torus": lambda: trimesh.creation.torus(0.05, 0.015),
}


@pytest.mark.parametrize("name", sorted(MESHES))
def test_grid_agrees_with_trimesh_within_2mm(name: str) -> None:
    mesh = MESHES[name]()
    grid = SDFGrid.from_mesh(mesh)
    p, _ = _near_surface(mesh, 1500, seed=2)
    exact = trimesh.proximity.signed_distance(mesh, p)  # positive inside, like ours
    err = np.abs(grid.query_np(p) - exact)
    assert np.percentile(err, 99) < 0.002 and err.mean() < 0.0005, (err.max(), np.percentile(err, 99))
    assert err.max() < 0.003
    # signs agree away from the surface
    far = np.abs(exact) > 0.003
    assert np.all(np.sign(grid.query_np(p[far])) == np.sign(exact[far]))


def test_mug_with_overlapping_parts_matches_the_union_distance() -> None:
    mug = procedural_objects(["mug"], seed=0)[0].mesh  # body and handle overlap: trimesh's sign fails there
    grid = SDFGrid.from_mesh(mug)
    p, _ = _near_surface(mug, 800, seed=3)
    err = np.abs(grid.query_np(p) - signed_distance(mug, p))
    assert np.percentile(err, 99) < 0.002 and err.max() < 0.003


def test_gradient_points_into_the_object_along_the_normal() -> None:
    mesh = trimesh.creation.box((0.08, 0.05, 0.12))
    grid = SDFGrid.from_mesh(mesh)
    p, face = trimesh.sample.sample_surface(mesh, 300, seed=4)
    n = mesh.face_normals[face]
    # away from edges (an edge's gradient is legitimately in between its faces)
    ok = np.all(np.abs(p) < np.array([0.03, 0.015, 0.05]) + np.abs(n) * 1.0, axis=1)
    pts = torch.tensor(p[ok] + 0.004 * n[ok], dtype=torch.float32, requires_grad=True)
    d = grid.query(pts)
    d.sum().backward()
    g = pts.grad.numpy()
    cos = np.einsum("ij,ij->i", g / np.linalg.norm(g, axis=1, keepdims=True), -n[ok])
    assert ok.sum() > 100 and cos.min() > 0.95
    assert np.allclose(np.linalg.norm(g, axis=1), 1.0, atol=0.1)  # a distance field has unit gradient
    assert np.allclose(grid.gradient(pts).numpy(), g)


def test_outside_the_grid_the_distance_keeps_growing_and_batches_keep_their_shape() -> None:
    mesh = trimesh.creation.icosphere(subdivisions=3, radius=0.04)
    grid = SDFGrid.from_mesh(mesh)
    far = np.array([[0.0, 0.0, r] for r in (0.1, 0.2, 0.5)])
    d = grid.query_np(far)
    assert np.all(np.diff(d) < 0)
    assert np.allclose(d, -(far[:, 2] - 0.04), atol=0.004)
    out = grid.query(torch.zeros(2, 5, 3))
    assert out.shape == (2, 5) and torch.allclose(out, torch.full((2, 5), 0.04), atol=0.003)  # medial ridge
    assert sdf_grid(mesh) is sdf_grid(mesh.copy())  # cached by geometry
