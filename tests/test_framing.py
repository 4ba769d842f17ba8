"""Framing on the grasp: the placement solve (--fill, centring, presets), the hidden-hand test against
real geometry, redraws and skips, and the render stage's fill over five categories."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import trimesh

from hoigen.render.cameras import Camera, camera_sampler, intrinsics, look_at, preset_intrinsics, project
from hoigen.render.framing import (
    SKIP_REASONS,
    box_share,
    frame_grasp,
    frame_views,
    hand_hidden,
    hull_points,
    place_camera,
)


def _box_of(points: np.ndarray, camera: Camera) -> tuple[np.ndarray, np.ndarray]:
    uv, z = project(points, camera.K, camera.world_to_cam)
    assert np.all(z > 0)
    return uv.min(axis=0), uv.max(axis=0)


@pytest.mark.parametrize("fill", [0.3, 0.5, 0.9])
@pytest.mark.parametrize("preset", ["random", "nocs-camera"])
def test_place_camera_fills_and_centres(fill, preset):
    rng = np.random.default_rng(3)
    points = rng.normal(size=(300, 3)) * [0.08, 0.05, 0.03] + [0.2, 0.9, -0.1]
    if preset == "random":
        K, width, height = intrinsics(96, 96, 50.0), 96, 96
    else:  # 640x480, principal point off the image centre: the box is centred on the image, not on (cx, cy)
        K, width, height = preset_intrinsics(preset)
    rotation = look_at(np.array([0.5, 1.3, 0.4]), points.mean(axis=0))[:3, :3]
    T = place_camera(rotation, K, width, height, points, fill)
    assert T is not None and np.allclose(T[:3, :3], rotation)
    camera = Camera(K, T, width, height)
    lo, hi = _box_of(points, camera)
    assert box_share(points, camera) == pytest.approx(fill, rel=1e-4)
    assert max(hi - lo) == pytest.approx(fill * min(width, height), rel=1e-4)
    assert np.allclose((lo + hi) / 2, [(width - 1) / 2, (height - 1) / 2], atol=0.01)
    # the hull's box is the points' box
    hull = hull_points(points)
    assert len(hull) < len(points) and box_share(hull, camera) == pytest.approx(box_share(points, camera), abs=1e-12)


def test_place_camera_gives_up_beyond_the_far_plane():
    points = np.array([[0.0, 0.0, 0.0], [0.05, 0.02, 0.0], [100.0, 0.0, 0.0]])  # 100 m wide
    rotation = look_at(np.array([50.0, 1.0, 5.0]), np.array([50.0, 0.0, 0.0]))[:3, :3]
    assert place_camera(rotation, intrinsics(64, 64, 50.0), 64, 64, points, 0.5, zfar=10.0) is None
    assert place_camera(rotation, intrinsics(64, 64, 50.0), 64, 64, points, 0.5, zfar=1000.0) is not None


def _front_camera(z: float = 1.0) -> Camera:
    """64x64 camera on the +z axis looking at the origin."""
    return Camera(intrinsics(64, 64, 50.0), look_at(np.array([0.0, 0.0, z]), np.zeros(3)), 64, 64)


def test_hand_hidden_against_a_box():
    wall = trimesh.creation.box(extents=(0.2, 0.2, 0.02))  # at the origin, facing the camera at z = 1
    occluders = [(np.asarray(wall.vertices), np.asarray(wall.faces))]
    cam = _front_camera()
    cloud = np.random.default_rng(0).uniform(-0.05, 0.05, (200, 3))
    behind = cloud * [1, 1, 0.2] + [0, 0, -0.1]
    in_front = cloud * [1, 1, 0.2] + [0, 0, 0.1]  # inside the wall's projected hull but nearer: the ray test decides
    beside = behind + [0.3, 0.0, 0.0]
    assert hand_hidden(cam, behind, occluders)
    assert not hand_hidden(cam, in_front, occluders)
    assert not hand_hidden(cam, beside, occluders)
    assert not hand_hidden(cam, np.concatenate([behind, in_front[:1]]), occluders)  # one point seen is enough
    assert not hand_hidden(cam, behind, [])  # nothing hides it
    # a point touching the front face (1 mm inside, within the tolerance) is seen; 5 mm inside it is not
    assert not hand_hidden(cam, np.array([[0.0, 0.0, 0.009]]), occluders)
    assert hand_hidden(cam, np.array([[0.0, 0.0, 0.005]]), occluders)
    assert hand_hidden(cam, behind + [10.0, 0.0, 0.0], occluders)  # out of the image: not seen


def test_frame_grasp_redraws_and_skips():
    sample = camera_sampler("random", 64)
    rng = np.random.default_rng
    hand = np.random.default_rng(1).uniform(-0.03, 0.03, (150, 3)) + [0.0, 0.05, 0.0]
    obj = trimesh.creation.box(extents=(0.06, 0.1, 0.06))
    points = np.concatenate([hand, obj.vertices])
    ok = frame_grasp(sample, rng(4), points, hand, [(obj.vertices, obj.faces)], fill=0.5, tries=5)
    again = frame_grasp(sample, rng(4), points, hand, [(obj.vertices, obj.faces)], fill=0.5, tries=5)
    assert ok.camera is not None and ok.skip == "" and ok.reason == "" and ok.seen == 1.0
    assert ok.fill == pytest.approx(0.5, rel=1e-4)
    assert np.array_equal(ok.camera.world_to_cam, again.camera.world_to_cam)
    # the hand inside a closed box (framed with it, so the camera is outside): every draw hides it
    shell = trimesh.creation.box(extents=(0.2, 0.2, 0.2))
    both = np.concatenate([hand, shell.vertices])
    hidden = frame_grasp(sample, rng(4), both, hand, [(shell.vertices, shell.faces)], fill=0.5, tries=4)
    assert hidden.camera is None and hidden.tries == 4 and hidden.skip == "hand_hidden"
    assert "hide the whole hand" in hidden.reason and "4 draws" in hidden.reason
    # a wall on the +z side of the hand hides it from some directions only: redrawn until it is seen
    wall = trimesh.creation.box(extents=(1.0, 1.0, 0.01))
    wall.apply_translation([0.0, 0.05, 0.1])
    occluders = [(wall.vertices, wall.faces)]
    draws = [frame_grasp(sample, rng(s), hand, hand, occluders, fill=0.5, tries=10) for s in range(12)]
    assert any(d.tries > 1 for d in draws)
    assert all(d.camera is not None and not hand_hidden(d.camera, hand, occluders) for d in draws)
    # a table above everything: no camera may sit below it
    high = frame_grasp(sample, rng(4), points, hand, [], fill=0.5, tries=3, support_height=50.0)
    assert high.camera is None and high.skip == "below_table" and "below the table" in high.reason
    table = frame_grasp(sample, rng(4), points, hand, [], fill=0.5, tries=3, support_height=-0.05)
    assert table.camera is not None and table.camera.center[1] > -0.05


def test_frame_views_aims_at_the_end_frame():
    obj = trimesh.creation.cylinder(radius=0.04, height=0.12)
    poses = [np.eye(4), np.eye(4)]
    hand_end = np.random.default_rng(2).uniform(-0.04, 0.04, (200, 3)) + [0.08, 0.0, 0.0]
    hand_start = hand_end + [0.0, 0.3, 0.5]  # far out on the approach
    views = frame_views(
        camera_sampler("random", 96), lambda v: np.random.default_rng(10 + v), 3, obj.vertices, obj.faces, poses,
        [hand_start, hand_end], fill=0.6, tries=5,
    )  # fmt: skip
    assert sorted(views) == [0, 1, 2]
    end_points = np.concatenate([obj.vertices, hand_end])
    for framing in views.values():
        cam = framing.camera
        lo, hi = _box_of(end_points, cam)
        assert max(hi - lo) / 96 == pytest.approx(0.6, rel=1e-3)
        assert np.allclose((lo + hi) / 2, [47.5, 47.5], atol=0.05)
        assert 0 < framing.seen < 1  # the approach's start leaves the image


@pytest.fixture(scope="module")
def five_categories(tmp_path_factory):
    from hoigen import api
    from hoigen.grasp.options import GraspOptions
    from hoigen.options import Common

    out = tmp_path_factory.mktemp("grasp5")
    cats = ["bottle", "bowl", "can", "mug", "camera"]
    api.grasp(None, out, GraspOptions(grasps=1, frames=2, categories=cats), Common(quiet=True))
    return out


def _end_frame_shares(folder) -> list[float]:
    from hoigen.data.shards import list_shards, read_shard

    shares = []
    for shard in list_shards(folder):
        for s in read_shard(shard):
            ann = s["ann.json"]
            if ann["trajectory"]["frame"] != ann["trajectory"]["frames"] - 1:
                continue
            boxes = np.array([b for b in (ann["hand"]["bbox"], ann["object"]["bbox"]) if b != [0, 0, 0, 0]])
            lo, hi = boxes[:, :2].min(axis=0), boxes[:, 2:].max(axis=0)
            shares.append(max(hi - lo) / min(ann["camera"]["width"], ann["camera"]["height"]))
    return shares


@pytest.mark.parametrize("fill", [0.35, 0.6])
def test_render_stage_fill_over_five_categories(five_categories, tmp_path, fill):
    from hoigen import api
    from hoigen.options import Common
    from hoigen.render.options import RenderOptions

    out = tmp_path / "render"
    api.render(five_categories, out, RenderOptions(views=2, size=64, fill=fill), Common(quiet=True))
    shares = _end_frame_shares(out)
    assert len(shares) == 10
    assert abs(np.median(shares) / fill - 1.0) < 0.15
    run = json.loads((out / "run.json").read_text())
    assert run["views_skipped"] == dict.fromkeys(SKIP_REASONS, 0) and run["config"]["fill"] == fill


def test_hidden_hand_views_are_skipped_and_counted(five_categories, tmp_path, monkeypatch, caplog):
    from hoigen import api
    from hoigen.options import Common
    from hoigen.render import framing
    from hoigen.render.options import RenderOptions

    monkeypatch.setattr(framing, "hand_hidden", lambda *a, **k: True)
    out = tmp_path / "render"
    with caplog.at_level(logging.WARNING, logger="hoigen.render"):
        api.render(five_categories, out, RenderOptions(views=2, size=32, camera_tries=2), Common(quiet=True))
    run = json.loads((out / "run.json").read_text())
    assert run["views_skipped"] == {"hand_hidden": 10, "out_of_view": 0, "below_table": 0}
    warnings = [r.getMessage() for r in caplog.records if r.name == "hoigen.render" and "skipped" in r.getMessage()]
    assert len(warnings) == 10 and all("hide the whole hand" in w and "2 draws" in w for w in warnings)


def test_merged_ranks_sum_their_skipped_views(five_categories, tmp_path, monkeypatch):
    from hoigen import api
    from hoigen.data.merge import merge
    from hoigen.options import Common
    from hoigen.render import framing
    from hoigen.render.options import RenderOptions

    monkeypatch.setattr(framing, "hand_hidden", lambda *a, **k: True)  # every view skipped: 5 objects x 2
    opts = RenderOptions(views=2, size=32, camera_tries=1)
    ranks = [tmp_path / f"rank{r}" for r in range(2)]
    alone = []
    for r, folder in enumerate(ranks):
        api.render(five_categories, folder, opts, Common(quiet=True, shard_index=r, num_shards=2))
        alone.append(sum(json.loads(f.read_text())["views_skipped"]["hand_hidden"]
                         for f in (folder / "render_stats").glob("shard-*.json")))  # fmt: skip
    assert sorted(alone) == [4, 6]  # each rank holds part of the count
    merged = merge(tmp_path / "merged", ranks, quiet=True)
    run = json.loads((tmp_path / "merged" / "run.json").read_text())
    assert merged.shards == 5 and run["views_skipped"] == {"hand_hidden": 10, "out_of_view": 0, "below_table": 0}
    assert len(list((tmp_path / "merged" / "render_stats").glob("shard-*.json"))) == 5


def test_hand_hidden_agrees_with_the_renderer():
    from hoigen.render.renderer import SceneSpec
    from hoigen.render.stage import _renderer

    wall = trimesh.creation.box(extents=(0.2, 0.2, 0.02))
    cam = _front_camera()
    renderer = _renderer(64, 64)  # the cached one: deleting a pyrender EGL renderer ends the shared display
    seen = []
    for x in (0.0, 0.05, 0.15, 0.25):
        hand = trimesh.creation.box(extents=(0.03, 0.03, 0.03))
        hand.apply_translation([x, 0.02, -0.1])
        result = renderer.render(
            SceneSpec(
                hand_vertices=hand.vertices, hand_faces=hand.faces, object_mesh=wall, object_pose=np.eye(4),
                nocs_from_mesh=np.eye(4), camera=cam, joints3d=np.zeros((21, 3)), mesh_key="wall",
            )
        )
        hidden = hand_hidden(cam, hand.vertices, [(wall.vertices, wall.faces)])
        assert hidden == (not result.mask_hand.any())
        seen.append(not hidden)
    assert seen == [False, False, True, True]


def test_render_frames_views_against_the_distractors_too(five_categories, tmp_path, monkeypatch):
    """The render stage hands each trajectory's distractors (world frame) to the hidden-hand check."""
    from hoigen import api
    from hoigen.data.shards import list_shards, read_shard
    from hoigen.objects import read_objects
    from hoigen.options import Common
    from hoigen.render import framing
    from hoigen.render.options import RenderOptions

    seen = []
    real = framing.frame_views

    def spy(*args, **kwargs):
        seen.append([v.copy() for v, _ in kwargs["occluders"]])
        return real(*args, **kwargs)

    monkeypatch.setattr(framing, "frame_views", spy)
    out = tmp_path / "render"
    api.render(five_categories, out, RenderOptions(views=1, size=32, distractors=2), Common(quiet=True))
    objects = {**read_objects(five_categories), **(read_objects(out) if (out / "objects.parquet").exists() else {})}
    anns = [s["ann.json"] for shard in list_shards(out) for s in read_shard(shard)]
    anns = [a for a in anns if a["trajectory"]["frame"] == 0]
    assert len(seen) == 5 and len(anns) == 5 and all(len(o) == 2 for o in seen)
    by_object = {a["object"]["id"]: a for a in anns}
    for occluders in seen:  # each call's meshes are some trajectory's distractors, posed as its ann says
        matches = []
        for ann in by_object.values():
            rows = [r for r in ann["instances"] if r["role"] == "distractor"]
            posed = [objects[r["id"]].mesh.vertices @ np.asarray(r["pose"])[:3, :3].T + np.asarray(r["pose"])[:3, 3]
                     for r in rows]  # fmt: skip
            same = [p.shape == o.shape and np.allclose(p, o, atol=1e-6) for p, o in zip(posed, occluders, strict=False)]
            matches.append(len(posed) == len(occluders) and all(same))
        assert sum(matches) == 1
