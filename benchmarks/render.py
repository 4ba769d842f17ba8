"""Render benches: the raw-GL renderer against pyrender on the 12 bench scenes at 512².

- ``render-vs-pyrender``: ratio = the full set of maps per second (raw-GL :class:`Renderer`) /
  a bare pyrender colour pass of the same meshes per second (the issue's baseline: pyrender's own
  lit pass, read back raw, no other maps). Goal >= 2.
- ``render-full-old-vs-new``: the full render on the pyrender path vs the raw-GL path (same maps).
- :func:`agreement`: how far the raw-GL maps are from the pyrender path's exact (float64 ray-hit) maps.

Run alone: ``python -m benchmarks.render`` (prints the rows and the agreement table).
"""

from __future__ import annotations

import numpy as np

from benchmarks.bench import Row, side_by_side


def bench_specs(size: int, count: int) -> list:
    """``count`` scenes of the embedded hand (varied curl) and three procedural objects, seeded cameras."""
    from hoigen.hand import load_hand
    from hoigen.objects import procedural_objects
    from hoigen.render.cameras import sample_camera
    from hoigen.render.renderer import SceneSpec

    hand = load_hand("right")
    objects = procedural_objects(["mug", "bottle", "bowl"])
    rng = np.random.default_rng(0)
    specs = []
    for i in range(count):
        out = hand.forward(np.zeros(3), hand.curl_pose(0.2 + 0.6 * i / max(1, count - 1)), np.zeros(10),
                           np.array([0.0, 0.0, 0.08]))
        obj = objects[i % len(objects)]
        cam = sample_camera(np.zeros(3), rng, size, size)
        specs.append(SceneSpec(out.vertices[0], hand.faces, obj.mesh, np.eye(4), obj.nocs_from_mesh, cam,
                               out.joints[0], mesh_key=obj.id))
    return specs


def _renderers(size: int) -> tuple:
    """The pyrender-path and raw-GL renderers of this size (cached: pyrender EGL renderers are never closed)."""
    from hoigen.render.pyrender_renderer import PyrenderRenderer
    from hoigen.render.renderer import Renderer

    key = ("renderers", size)
    if key not in _CACHE:
        _CACHE[key] = (PyrenderRenderer(size, size), Renderer(size, size))
    return _CACHE[key]


_CACHE: dict = {}


def bench_render(size: int = 512, frames: int = 12, repeats: int = 5) -> list[Row]:
    """Seconds per frame of the bare pyrender pass, the pyrender-path full render and the raw-GL full render."""
    specs = bench_specs(size, frames)
    old, new = _renderers(size)
    for r in (old, new):
        r.render(specs[0])  # warm-up: GL buffers, mesh caches

    def bare() -> None:
        for spec in specs:
            old.shade_only(spec)

    def full_old() -> None:
        for spec in specs:
            old.render(spec)

    def full_new() -> None:
        for spec in specs:
            new.render(spec)

    base, cand = side_by_side(bare, full_new, repeats)
    old_t, new_t = side_by_side(full_old, full_new, repeats)
    base, cand, old_t, new_t = (t / frames for t in (base, cand, old_t, new_t))
    return [
        Row(f"{size}px s/frame: bare pyrender colour pass ({1 / base:.1f} fps) vs all maps, raw GL "
            f"({1 / cand:.1f} fps); goal >= 2", base, cand, key="render-vs-pyrender"),
        Row(f"{size}px s/frame: all maps, pyrender path ({1 / old_t:.1f} fps) vs raw GL ({1 / new_t:.1f} fps)",
            old_t, new_t, key="render-full-old-vs-new"),
    ]


def agreement(size: int = 512, frames: int = 12) -> dict[str, float]:
    """Raw-GL maps vs the pyrender path's exact maps over the bench scenes: seg/amodal pixels that
    differ, max depth difference (m) where both see the same instance and the share over 4.4 um, share of pixels
    whose NOCS / normal differ by more than one level, and the largest difference."""
    old, new = _renderers(size)
    seg = amodal = pixels = nocs_big = normal_big = depth_big = 0
    depth = nocs_max = normal_max = 0.0
    for spec in bench_specs(size, frames):
        a, b = old.render(spec), new.render(spec)
        seg += int((a.seg != b.seg).sum())
        amodal += int((a.amodal != b.amodal).sum())
        same = (a.seg == b.seg) & (a.seg > 0)
        pixels += int(same.sum())
        dz = np.abs(a.depth_m[same].astype(np.float64) - b.depth_m[same])
        depth, depth_big = max(depth, float(dz.max())), depth_big + int((dz > 4.4e-6).sum())
        dn = np.abs(a.nocs[same].astype(int) - b.nocs[same]).max(axis=1)
        dm = np.abs(a.normal[same].astype(int) - b.normal[same]).max(axis=1)
        nocs_big += int((dn > 1).sum())
        normal_big += int((dm > 1).sum())
        nocs_max, normal_max = max(nocs_max, float(dn.max())), max(normal_max, float(dm.max()))
    return {
        "seg_pixels_differing": seg,
        "amodal_pixels_differing": amodal,
        "depth_max_diff_m": depth,
        "depth_share_over_4.4um": depth_big / max(pixels, 1),
        "nocs_share_off_by_more_than_1": nocs_big / max(pixels, 1),
        "normal_share_off_by_more_than_1": normal_big / max(pixels, 1),
        "nocs_max_diff": nocs_max,
        "normal_max_diff": normal_max,
        "pixels": pixels,
    }


def main() -> None:
    for row in bench_render():
        print(f"{row.name}: base {row.base * 1000:.1f} ms, cand {row.cand * 1000:.1f} ms, ratio {row.ratio:.2f}x")
    for k, v in agreement().items():
        print(f"{k}: {v}")


if __name__ == "__main__":
    main()
