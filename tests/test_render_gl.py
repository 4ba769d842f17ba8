"""The raw-GL renderer against the pyrender path's exact (float64 ray-hit) maps, and its backend switch."""

from __future__ import annotations

import numpy as np
import pytest

from hoigen.errors import HoigenError

SIZE = 128


@pytest.fixture(scope="module")
def pair():
    from benchmarks.render import _renderers, bench_specs

    old, new = _renderers(SIZE)
    return [(old.render(spec), new.render(spec)) for spec in bench_specs(SIZE, 6)]


def test_gl_maps_match_the_exact_maps(pair):
    pixels = off_nocs = off_normal = 0
    for a, b in pair:
        assert np.array_equal(a.seg, b.seg)  # same rasteriser coverage, same nearest instance
        assert np.array_equal(a.amodal, b.amodal)
        for k in a.full_masks:
            assert np.array_equal(a.full_masks[k], b.full_masks[k])
        covered = a.seg > 0
        assert covered.sum() > 500
        diff = np.abs(a.depth_m[covered].astype(np.float64) - b.depth_m[covered])
        assert np.mean(diff <= 4.4e-6) > 0.999 and diff.max() < 5e-5  # depth-buffer near-ties within a mesh
        assert np.all(np.abs(a.depth.astype(int) - b.depth)[covered] <= 1)
        assert np.all(b.depth[~covered] == 0) and np.all(b.depth_m[~covered] == 0) and np.all(b.nocs[~covered] == 0)
        pixels += int(covered.sum())
        off_nocs += int((np.abs(a.nocs[covered].astype(int) - b.nocs[covered]).max(axis=1) > 1).sum())
        off_normal += int((np.abs(a.normal[covered].astype(int) - b.normal[covered]).max(axis=1) > 1).sum())
        assert np.array_equal(a.joints_visible, b.joints_visible)
        assert np.array_equal(a.joints_self_occluded, b.joints_self_occluded)
        assert np.array_equal(a.skeleton, b.skeleton)
        assert np.array_equal(b.shade.max(axis=2) > 0, covered)  # shade silhouette = seg
    assert off_nocs / pixels < 4e-4 and off_normal / pixels < 4e-4


def test_backend_switch(monkeypatch):
    from hoigen.render.backend import renderer_kind

    monkeypatch.delenv("HOIGEN_GL", raising=False)
    assert renderer_kind() == "gl"
    for value, kind in (("pyrender", "pyrender"), ("osmesa", "pyrender"), ("EGL", "gl")):
        monkeypatch.setenv("HOIGEN_GL", value)
        assert renderer_kind() == kind
    monkeypatch.setenv("HOIGEN_GL", "vulkan")
    with pytest.raises(HoigenError, match="HOIGEN_GL"):
        renderer_kind()


def test_hand_buffer_is_rewritten_not_reallocated():
    from benchmarks.render import bench_specs
    from hoigen.render.stage import _renderer

    r = _renderer(SIZE, SIZE)
    specs = bench_specs(SIZE, 3)
    r.render(specs[0])
    vbo = r._hand.gl.vbo
    for spec in specs[1:]:
        r.render(spec)
    assert r._hand.gl.vbo is vbo  # same faces: vertex data updated in place
