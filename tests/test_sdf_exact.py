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
    # axis-major and numpy conveniences
    ax = torch.from_numpy(rows).reshape(3, 10, -1).requires_grad_(True)
    assert np.array_equal(_bits(grid.query_axis_major(ax).detach().reshape(-1)), _bits(v_ref))
    assert np.array_equal(grid.query_np(rows.T), v_ref.numpy().astype(np.float64))
    assert grid.query_np(np.zeros((0, 3))).shape == (0,)
