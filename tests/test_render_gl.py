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
        # the rest: depth-buffer near-ties inside one mesh, and edge pixels whose centre ray misses every
        # triangle (covered by the rasteriser's tie rule; both paths extrapolate a triangle's plane there)
        assert np.mean(diff <= 4.4e-6) > 0.999 and diff.max() < 5e-4
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


# ---------------------------------------------------------------------------- appearance
def _quad_scene(visual_mesh, lights=None):
    from hoigen.render.cameras import Camera, intrinsics, look_at
    from hoigen.render.renderer import SceneSpec

    cam = Camera(intrinsics(64, 64, 40.0), look_at(np.array([0.0, 0.0, 0.5]), np.zeros(3)), 64, 64)
    far = np.array([[0, 0, 5.0], [0.001, 0, 5.0], [0, 0.001, 5.0]])
    return SceneSpec(far, np.array([[0, 1, 2]]), visual_mesh, np.eye(4), np.eye(4), cam, np.zeros((21, 3)),
                     lights=lights)


def test_textured_quad_renders_its_texture():
    import trimesh
    from PIL import Image

    from hoigen.render.cameras import project
    from hoigen.render.stage import _renderer

    # a 0.4 m quad facing the camera, uv (0,0) bottom-left; a 2x2 texture: red, green / blue, white
    v = np.array([[-0.2, -0.2, 0], [0.2, -0.2, 0], [0.2, 0.2, 0], [-0.2, 0.2, 0]], dtype=float)
    uv = np.array([[0, 0], [1, 0], [1, 1], [0, 1]], dtype=float)
    texels = np.array([[[255, 0, 0], [0, 255, 0]], [[0, 0, 255], [255, 255, 255]]], dtype=np.uint8)  # row 0 = top
    image = Image.fromarray(np.kron(texels, np.ones((16, 16, 1), np.uint8)))
    quad = trimesh.Trimesh(v, [[0, 1, 2], [0, 2, 3]], process=False,
                           visual=trimesh.visual.TextureVisuals(uv=uv, image=image))
    spec = _quad_scene(quad)
    res = _renderer(64, 64).render(spec)
    for point, colour in (((-0.1, 0.1), (255, 0, 0)), ((0.1, 0.1), (0, 255, 0)),
                          ((-0.1, -0.1), (0, 0, 255)), ((0.1, -0.1), (255, 255, 255))):
        uv_px, _ = project(np.array([[*point, 0.0]]), spec.camera.K, spec.camera.world_to_cam)
        px = res.shade[int(round(uv_px[0, 1])), int(round(uv_px[0, 0]))]
        assert np.all(np.abs(px.astype(int) - colour) <= 3), (point, px)


def test_vertex_colours_and_lights():
    import trimesh

    from hoigen.render.renderer import Light
    from hoigen.render.scene import sample_lights
    from hoigen.render.stage import _renderer

    box = trimesh.creation.box(extents=(0.3, 0.3, 0.01))
    box.visual = trimesh.visual.ColorVisuals(box, vertex_colors=np.tile([40, 200, 90, 255], (len(box.vertices), 1)))
    r = _renderer(64, 64)
    coloured = r.render(_quad_scene(box))
    m = coloured.seg == 2
    assert m.sum() > 500 and np.all(np.abs(coloured.shade[m].astype(int) - [40, 200, 90]).max(axis=1) <= 3)
    # same seed, same lights; another seed differs; lights change the shade only
    assert sample_lights(np.random.default_rng(7)) == sample_lights(np.random.default_rng(7))
    assert len({sample_lights(np.random.default_rng(s)) for s in range(10)}) == 10
    assert all(1 <= len(sample_lights(np.random.default_rng(s))) <= 3 for s in range(30))
    plain = trimesh.creation.box(extents=(0.3, 0.3, 0.01))
    a = r.render(_quad_scene(plain))
    lights = (Light((0.5, 0.0, 1.0), (0.3, 0.1, 0.1)), Light((0.0, 0.3, 1.0), (0.1, 0.2, 0.4)))
    b = r.render(_quad_scene(plain, lights=lights))
    assert not np.array_equal(a.shade, b.shade)
    for name in ("seg", "depth", "nocs", "normal", "amodal"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    with pytest.raises(HoigenError, match="lights"):
        r.render(_quad_scene(plain, lights=()))
