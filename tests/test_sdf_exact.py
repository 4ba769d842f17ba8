"""The SDF grid's numpy fast paths compute what the code before them computed, bit for bit: the
trilinear lookup (``SDFGrid.lookup_np``) against the torch implementation it replaced, on grids of
the grasp bench's objects, at points inside, on and outside the grid."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hoigen.objects import PROCEDURAL_CATEGORIES, procedural_objects
from hoigen.objects.sdf import SDFGrid


def _bench_meshes() -> dict[str, object]:
    from benchmarks.grasp import extra_objects

    assets = procedural_objects(list(PROCEDURAL_CATEGORIES)) + extra_objects()
    return {a.category or a.id: a.mesh for a in assets}


@pytest.fixture(scope="module")
def grids() -> dict[str, SDFGrid]:
    return {name: SDFGrid.from_mesh(mesh, resolution=32) for name, mesh in _bench_meshes().items()}


class _TorchLookup:
    """The torch lookup as it was before ``lookup_np`` (session 7): the reference, verbatim maths."""

    def __init__(self, grid: SDFGrid) -> None:
        self.spacing = grid.spacing
        self._origin_t = torch.tensor(grid.origin, dtype=torch.float32)
        self._upper = torch.tensor([s - 1 for s in grid.shape], dtype=torch.float32)
        nx, ny, nz = grid.shape
        self._strides = torch.tensor([ny * nz, nz, 1], dtype=torch.long)
        corners = torch.tensor([[dx, dy, dz] for dx in (0, 1) for dy in (0, 1) for dz in (0, 1)], dtype=torch.long)
        offsets = corners @ self._strides
        self._last_cell_f = torch.tensor([max(s - 2, 0) for s in grid.shape], dtype=torch.float32)
        self._strides_f = self._strides.to(torch.float32)
        self._float_index = nx * ny * nz < 2**24
        flat = torch.from_numpy(grid.values.copy()).reshape(-1)
        padded = torch.cat([flat, flat.new_zeros(int(offsets.max()))])
        self._table = torch.stack([padded[int(o) : int(o) + len(flat)] for o in offsets])

    def interpolate(self, pts: torch.Tensor, with_grad: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        u = (pts - self._origin_t[:, None]) / self.spacing
        uc = torch.minimum(torch.clamp(u, min=0.0), self._upper[:, None])
        off = u - uc
        outside = (off * off).sum(0).sqrt()
        cell = torch.minimum(uc.floor(), self._last_cell_f[:, None])
        f = uc - cell
        fx, fy, fz = f[0], f[1], f[2]
        if self._float_index:
            base = (cell * self._strides_f[:, None]).sum(0).to(torch.int32)
        else:
            base = (cell.to(torch.long) * self._strides[:, None]).sum(0)
        v = self._table.index_select(1, base)
        dz = v[1::2] - v[0::2]
        vz = v[0::2] + fz * dz
        dy = vz[1::2] - vz[0::2]
        vy = vz[0::2] + fy * dy
        dx = vy[1] - vy[0]
        value = vy[0] + fx * dx - outside * self.spacing
        if not with_grad:
            return value, None
        gy = dy[0] + fx * (dy[1] - dy[0])
        dzy = dz[0::2] + fy * (dz[1::2] - dz[0::2])
        gz = dzy[0] + fx * (dzy[1] - dzy[0])
        inside = 1.0 - off.abs().sign()
        grad = torch.stack([dx, gy, gz]) * inside / self.spacing
        grad = grad - off / outside.clamp(min=1e-12)
        return value, grad


def _probe_rows(grid: SDFGrid, seed: int) -> np.ndarray:
    """(3, n) float32: random points over the grid and 2 cm beyond it, grid points, points on cell
    faces, on the grid's border planes and just past them."""
    rng = np.random.default_rng(seed)
    shape = np.asarray(grid.shape)
    top = grid.origin + grid.spacing * (shape - 1)
    parts = [rng.uniform(grid.origin - 0.02, top + 0.02, size=(3000, 3))]
    parts.append(rng.uniform(grid.origin, top, size=(3000, 3)))  # all inside
    parts.append(grid.origin + grid.spacing * rng.integers(0, shape, size=(500, 3)))  # grid points
    on_face = rng.uniform(grid.origin, top, size=(500, 3))
    axis = rng.integers(0, 3, 500)
    on_face[np.arange(500), axis] = (grid.origin + grid.spacing * rng.integers(0, shape, size=(500, 3)))[
        np.arange(500), axis
    ]
    parts.append(on_face)
    border = rng.uniform(grid.origin, top, size=(600, 3))
    ends = np.where(rng.random((600, 3)) < 0.5, grid.origin, top)
    pick = rng.random((600, 3)) < 0.4
    border[pick] = ends[pick]
    parts.append(border)
    parts.append(border + rng.choice([-1e-6, 1e-6, 1e-3], size=(600, 3)))
    return np.ascontiguousarray(np.concatenate(parts).astype(np.float32).T)


def _bits(x: torch.Tensor | np.ndarray) -> np.ndarray:
    a = x.numpy() if isinstance(x, torch.Tensor) else x
    return np.ascontiguousarray(a, dtype=np.float32).view(np.int32)


def test_numpy_lookup_equals_the_torch_lookup_bit_for_bit(grids) -> None:
    assert len(grids) == 13
    for i, (name, grid) in enumerate(grids.items()):
        ref = _TorchLookup(grid)
        rows = _probe_rows(grid, seed=i)
        u = (rows - grid.origin.astype(np.float32)[:, None]) / np.float32(grid.spacing)
        beyond = ((u < 0) | (u > np.asarray(grid.shape, dtype=np.float32)[:, None] - 1)).any(axis=0)
        assert 0.1 < beyond.mean() < 0.5, name  # both kinds of point are there
        for with_grad in (False, True):
            v_ref, g_ref = ref.interpolate(torch.from_numpy(rows), with_grad)
            value, grad = grid.lookup_np(rows, with_grad)
            assert value.dtype == np.float32 and value.shape == (rows.shape[1],)
            assert np.array_equal(_bits(value), _bits(v_ref)), name
            if with_grad:
                assert grad.dtype == np.float32 and grad.shape == rows.shape
                assert np.array_equal(_bits(grad), _bits(g_ref)), name
            else:
                assert grad is None
        inside_only = rows[:, ~beyond]  # the path that skips the outside terms
        v_ref, g_ref = ref.interpolate(torch.from_numpy(np.ascontiguousarray(inside_only)), True)
        value, grad = grid.lookup_np(inside_only, True)
        assert np.array_equal(_bits(value), _bits(v_ref)) and np.array_equal(_bits(grad), _bits(g_ref)), name


def test_torch_queries_wrap_the_numpy_lookup(grids) -> None:
    grid = grids["mug"]
    ref = _TorchLookup(grid)
    rows = _probe_rows(grid, seed=20)
    v_ref, g_ref = ref.interpolate(torch.from_numpy(rows), True)
    # point-major, through autograd (the backward multiplies the saved gradient by the upstream one)
    pts = torch.from_numpy(np.ascontiguousarray(rows.T)).requires_grad_(True)
    value = grid.query(pts)
    up = torch.rand(value.shape, generator=torch.Generator().manual_seed(0))
    (g,) = torch.autograd.grad(value, pts, up)
    assert np.array_equal(_bits(value.detach()), _bits(v_ref))
    assert np.array_equal(_bits(g), _bits((g_ref * up).T.contiguous()))
    # the numpy convenience
    assert np.array_equal(grid.query_np(rows.T), v_ref.numpy().astype(np.float64))
    assert grid.query_np(np.zeros((0, 3))).shape == (0,)


# -- the grid build ----------------------------------------------------------------------------------


def _reference_grid(mesh, resolution: int = 64, pad: float = 0.03, seed: int = 0) -> np.ndarray:
    """``SDFGrid.from_mesh``'s values as computed before session 8 (cube candidates, per-pair
    triangle terms, full distance transforms), verbatim but for names."""
    from scipy import ndimage
    from scipy.spatial import cKDTree

    from hoigen.objects.geometry import _closest_on_triangles
    from hoigen.objects.sdf import BAND_CELLS, K_NEAREST, SAMPLES_PER_CELL_AREA

    def dilate(mask, radius):
        out = mask.view(np.uint8)
        for axis in range(3):
            out = ndimage.maximum_filter1d(out, size=2 * radius + 1, axis=axis, mode="constant")
        return out.view(bool)

    def far_from(mask, cells):
        free = np.argwhere(~mask)
        out = np.zeros(mask.shape, dtype=bool)
        margin = int(np.floor(cells)) + 1
        lo = np.maximum(free.min(axis=0) - margin, 0)
        hi = np.minimum(free.max(axis=0) + margin + 1, mask.shape)
        box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
        out[box] = ndimage.distance_transform_edt(~mask[box]) > cells
        return out

    def band_distance(pts, triangles, faces):
        faces = np.sort(faces, axis=1)
        keep = np.ones(faces.shape, dtype=bool)
        keep[:, 1:] = faces[:, 1:] != faces[:, :-1]
        rows = np.nonzero(keep)[0]
        tri = triangles[faces[keep]]
        p = pts[rows]
        q, _ = _closest_on_triangles(p, tri[:, 0], tri[:, 1], tri[:, 2])
        d = np.full(faces.shape, np.inf)
        d[keep] = np.linalg.norm(q - p, axis=1)
        return d.min(axis=1)

    def sample(n, rng):
        area = np.asarray(mesh.area_faces, dtype=np.float64)
        face = rng.choice(len(area), size=n, p=area / area.sum())
        face = np.concatenate([face, np.arange(len(area))])
        tri = np.asarray(mesh.triangles, dtype=np.float64)[face]
        u, v = rng.random(len(face)), rng.random(len(face))
        flip = u + v > 1.0
        u[flip], v[flip] = 1.0 - u[flip], 1.0 - v[flip]
        u[n:], v[n:] = 1 / 3, 1 / 3
        return tri[:, 0] + u[:, None] * (tri[:, 1] - tri[:, 0]) + v[:, None] * (tri[:, 2] - tri[:, 0]), face

    lo, hi = np.asarray(mesh.bounds, dtype=np.float64)
    lo, hi = lo - pad, hi + pad
    spacing = float((hi - lo).max() / (resolution - 1))
    shape = np.ceil((hi - lo) / spacing - 1e-6).astype(int) + 1
    axes = [lo[i] + spacing * np.arange(shape[i]) for i in range(3)]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
    rng = np.random.default_rng(seed)
    count = int(np.clip(SAMPLES_PER_CELL_AREA * mesh.area / spacing**2, 20_000, 400_000))
    samples, face = sample(count, rng)
    normals = np.asarray(mesh.face_normals, dtype=np.float64)[face]
    tree = cKDTree(samples, balanced_tree=False, compact_nodes=False)
    band = BAND_CELLS * spacing
    occupied = np.zeros(shape, dtype=bool)
    cell = np.clip(np.rint((samples - lo) / spacing).astype(np.int64), 0, shape - 1)
    occupied[cell[:, 0], cell[:, 1], cell[:, 2]] = True
    cand = np.flatnonzero(dilate(occupied, int(np.floor(BAND_CELLS + 0.5 * np.sqrt(3.0)))))
    d_k, idx = tree.query(grid[cand], k=K_NEAREST, distance_upper_bound=band)
    hit = np.isfinite(d_k[:, 0])
    in_band = np.zeros(len(grid), dtype=bool)
    in_band[cand[hit]] = True
    idx = idx[hit]
    pts = grid[in_band]
    short = ~np.isfinite(d_k[hit, -1])
    if short.any():
        idx[short] = tree.query(pts[short], k=K_NEAREST)[1]
    values = np.zeros(len(grid))
    dist = band_distance(pts, np.asarray(mesh.triangles, dtype=np.float64), face[idx])
    inside_band = np.einsum("mkj,mkj->mk", pts[:, None] - samples[idx], normals[idx]).mean(axis=1) < 0
    band3 = in_band.reshape(shape)
    labels, _ = ndimage.label(~band3)
    border = np.unique(
        np.concatenate([labels[[0, -1]].ravel(), labels[:, [0, -1]].ravel(), labels[:, :, [0, -1]].ravel()])
    )
    outside = np.isin(labels, border[border > 0])
    inside_band |= far_from(outside, BAND_CELLS + 1.0).reshape(-1)[in_band]
    values[in_band] = np.where(inside_band, dist, -dist)
    band_abs = np.zeros(shape)
    band_abs[band3] = dist
    gap, (ii, jj, kk) = ndimage.distance_transform_edt(~band3, return_indices=True)
    far = (gap * spacing + band_abs[ii, jj, kk]).reshape(-1)
    off = ~in_band
    values[off] = np.where(outside.reshape(-1)[off], -far[off], far[off])
    return values.reshape(shape).astype(np.float32)


def test_grid_build_equals_the_reference_build_bit_for_bit() -> None:
    meshes = _bench_meshes()
    assert len(meshes) == 13
    for name, mesh in meshes.items():
        grid = SDFGrid.from_mesh(mesh)
        ref = _reference_grid(mesh)
        assert grid.values.shape == ref.shape and np.array_equal(_bits(grid.values), _bits(ref)), name


@pytest.mark.parametrize("radius", [1.0, 2.5, 3.0, 3.0 + 0.5 * np.sqrt(3.0), 4.0, np.sqrt(17.0), 110.5])
def test_within_equals_the_distance_transform_threshold(radius: float) -> None:
    from scipy import ndimage

    from hoigen.objects.sdf import _far_from, _within

    rng = np.random.default_rng(int(radius * 100))
    for density in (0.002, 0.02, 0.3):
        mask = rng.random((23, 31, 17)) < density
        mask[0, 0, 0] = True
        edt = ndimage.distance_transform_edt(~mask)
        assert np.array_equal(_within(mask, radius), edt <= radius)
        assert np.array_equal(_far_from(mask, radius), edt > radius)


def test_gap_equals_the_distance_transform_distances() -> None:
    from scipy import ndimage

    from hoigen.objects.sdf import _gap

    mask = np.random.default_rng(3).random((19, 26, 21)) < 0.01
    gap, nearest = ndimage.distance_transform_edt(~mask, return_indices=True)
    assert np.array_equal(_gap(nearest), gap.reshape(-1))


def test_band_distance_equals_the_per_pair_triangle_distance() -> None:
    from hoigen.objects.geometry import _closest_on_triangles
    from hoigen.objects.sdf import _band_distance

    mesh = _bench_meshes()["tm-scanned"]
    tri = np.asarray(mesh.triangles, dtype=np.float64)
    rng = np.random.default_rng(4)
    pts = rng.uniform(mesh.bounds[0] - 0.01, mesh.bounds[1] + 0.01, size=(20000, 3))
    faces = rng.integers(0, len(tri), size=(20000, 4))
    faces[::3, 1] = faces[::3, 0]  # repeated faces are taken once
    corner = tri[:, 0]
    got = _band_distance(pts, corner, (tri[:, 1] - corner, tri[:, 2] - corner), faces, chunk=3000)
    q, _ = _closest_on_triangles(np.repeat(pts, 4, axis=0), *(tri[faces.reshape(-1)][:, i] for i in range(3)))
    ref = np.linalg.norm(q - np.repeat(pts, 4, axis=0), axis=1).reshape(-1, 4).min(axis=1)
    assert np.array_equal(got, ref)
