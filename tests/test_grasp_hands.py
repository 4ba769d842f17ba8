"""Hands and the table in the grasp stage: --hands right|left|both, the support plane, --lift.

One small grasp run (two procedural objects, both hands, a lift) is shared by the tests that read
shards: every frame is checked against the plane and the lift against rigid motion, from the MANO
parameters in ann.json through the hand model (as render reads them).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from hoigen.api import grasp
from hoigen.data.index import read_index
from hoigen.data.runner import StageContext
from hoigen.data.shards import list_shards, read_shard
from hoigen.grasp.metrics import GraspFilter
from hoigen.grasp.options import GraspOptions
from hoigen.grasp.report import filter_stats, no_grasp_error, print_report
from hoigen.grasp.stage import grasp_sides, object_pose, support_in_mesh
from hoigen.grasp.synth import synthesize_grasps
from hoigen.grasp.trajectory import approach_from_above, clearance_rise, lift_offsets
from hoigen.hand import load_hand
from hoigen.objects import procedural_objects, read_objects
from hoigen.options import Common, OptionError
from hoigen.recipe import build_section

HEIGHT = 0.05  # not 0: a table top that is not the world origin's plane
LIFT, LIFT_FRAMES, FRAMES = 0.08, 2, 4
LOOSE = {"max_penetration": 2.0, "max_sim_displacement": 50.0, "min_contacts": 1}  # keeps the runs short


def trajectories(folder: Path) -> dict[str, list[dict]]:
    """ann.json of every frame, per (object, grasp), in frame order."""
    out: dict[str, list[dict]] = {}
    for shard in list_shards(folder):
        for s in read_shard(shard):
            out.setdefault(s["__key__"].rsplit("_", 1)[0], []).append(s["ann.json"])
    return {k: sorted(v, key=lambda a: a["trajectory"]["frame"]) for k, v in sorted(out.items())}


def hand_vertices(anns: list[dict]) -> np.ndarray:
    """(F, V, 3) world vertices of the hand of each frame, posed from the stored MANO parameters."""
    hand = load_hand(anns[0]["hand"]["side"])
    args = (np.stack([np.asarray(a["hand"][k], np.float64) for a in anns])
            for k in ("global_orient", "hand_pose", "betas", "transl"))  # fmt: skip
    return hand.forward(*args).vertices.astype(np.float64)


def world(mesh, pose) -> np.ndarray:
    pose = np.asarray(pose, np.float64)
    return np.asarray(mesh.vertices) @ pose[:3, :3].T + pose[:3, 3]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("hands")
    opts = GraspOptions(
        categories=["can", "mug"], grasps=3, frames=FRAMES, hands="both", candidates=8, table_height=HEIGHT,
        lift=LIFT, lift_frames=LIFT_FRAMES, **LOOSE,
    )  # fmt: skip
    grasp(None, out, opts, Common(seed=5, quiet=True))
    return out


def test_both_draws_each_grasps_side_from_its_seed(run, tmp_path) -> None:
    rows = read_index(run).to_pylist()
    sides = {(r["object"], r["grasp"]): r["hand_side"] for r in rows}
    assert set(sides.values()) == {"left", "right"}  # this seed gives a run with both
    ctx = StageContext("grasp", 5, None, run)
    for obj in {o for o, _ in sides}:
        drawn = grasp_sides("both", obj, 3, ctx)
        assert [sides[(obj, g)] for g in range(3)] == drawn  # every grasp was accepted (loose filters)
    for anns in trajectories(run).values():
        assert {a["hand"]["side"] for a in anns} == {anns[0]["hand"]["side"]}
        assert anns[0]["hand"]["model"] == load_hand(anns[0]["hand"]["side"]).name
    stats = json.loads(next((run / "grasp_stats").glob("*.json")).read_text())
    assert sum(s["wanted"] for s in stats["sides"].values()) == stats["wanted"] == 3
    assert grasp_sides("both", "mug-000", 8, ctx) == grasp_sides("both", "mug-000", 8, ctx)
    assert grasp_sides("left", "mug-000", 2, ctx) == ["left", "left"]


def test_every_frame_stays_above_the_table_and_the_object_rests_on_it(run) -> None:
    objects = read_objects(run)
    trajs = trajectories(run)
    assert len(trajs) == 6
    for anns in trajs.values():
        assert all(a["support"] == {"height": HEIGHT} for a in anns)
        assert len(anns) == FRAMES + LIFT_FRAMES and anns[0]["trajectory"]["frames"] == FRAMES + LIFT_FRAMES
        assert anns[0]["trajectory"]["grasp_frame"] == FRAMES - 1
        verts = hand_vertices(anns)
        assert verts[..., 1].min() >= HEIGHT  # no hand vertex below the plane, in any frame
        assert verts[0, :, 1].min() > HEIGHT + 0.02  # the approach starts clear of the table
        mesh = objects[anns[0]["object"]["id"]].mesh
        for a in anns[:FRAMES]:  # upright (a yaw about y only), lowest point on the plane
            pose = np.asarray(a["object"]["pose"])
            assert np.allclose(pose[1, :3], [0.0, 1.0, 0.0], atol=1e-12)
            assert abs(world(mesh, pose)[:, 1].min() - HEIGHT) < 1e-6
        metrics = anns[0]["grasp"]
        assert metrics["table_clearance_cm"] >= 0.0
        assert np.isclose(metrics["table_clearance_cm"], (verts[FRAMES - 1, :, 1].min() - HEIGHT) * 100, atol=2e-3)


def test_lift_moves_hand_and_object_together(run) -> None:
    for anns in trajectories(run).values():
        verts = hand_vertices(anns)
        g = FRAMES - 1
        held = np.linalg.inv(np.asarray(anns[g]["object"]["pose"]))
        in_object = [v @ held[:3, :3].T + held[:3, 3] for v in verts]
        for f in range(g + 1, FRAMES + LIFT_FRAMES):
            pose = np.asarray(anns[f]["object"]["pose"])
            inv = np.linalg.inv(pose)
            assert np.abs(verts[f] @ inv[:3, :3].T + inv[:3, 3] - in_object[g]).max() < 1e-5  # rigid with the object
            rise = pose[:3, 3] - np.asarray(anns[g]["object"]["pose"])[:3, 3]
            assert np.allclose(rise, [0.0, LIFT * (f - g) / LIFT_FRAMES, 0.0], atol=1e-12)
            assert np.allclose(pose[:3, :3], np.asarray(anns[g]["object"]["pose"])[:3, :3])
        assert anns[-1]["grasp"] == anns[g]["grasp"]  # the grasp frame's metrics on every frame
        joints = np.asarray(anns[-1]["hand"]["joints3d"]) - np.asarray(anns[g]["hand"]["joints3d"])
        assert np.allclose(joints, [0.0, LIFT, 0.0], atol=1e-5)


def test_left_and_right_grasps_pass_the_same_filters_on_a_table() -> None:
    strict = GraspFilter()  # the default thresholds
    for side in ("right", "left"):
        hand = load_hand(side)
        accepted = 0
        for i, asset in enumerate(procedural_objects(["can", "mug"], seed=0)):
            support = support_in_mesh(asset)
            found, report = synthesize_grasps(
                asset.sdf_mesh, hand, np.random.default_rng([1, i]), 2, category=asset.category, key=asset.sha256,
                candidates=8, support=support,
            )  # fmt: skip
            assert report.evaluated == report.accepted + report.rejected
            for g in found:
                m = g.metrics
                assert strict.accepts(m) and m["accepted"]
                verts = hand.forward(*g.pose.mano_params(hand).values()).vertices[0]
                assert verts[:, 1].min() >= support and m["table_clearance_cm"] >= 0
            accepted += len(found)
        assert accepted >= 3, side  # of 4 wanted: both hands grasp on the table


def test_object_pose_on_and_off_the_table() -> None:
    asset = procedural_objects(["bottle"], seed=0)[0]
    floating = object_pose(asset, np.random.default_rng(3))
    standing = object_pose(asset, np.random.default_rng(3), table_height=-0.2)
    assert np.allclose(floating[:3, :3], standing[:3, :3])  # the same yaw from the same generator
    centre = asset.mesh.bounds.mean(axis=0)
    assert np.allclose(floating[:3, :3] @ centre + floating[:3, 3], 0.0, atol=1e-12)  # as before the table
    assert abs(world(asset.mesh, standing)[:, 1].min() + 0.2) < 1e-9
    assert np.allclose((standing[:3, :3] @ centre + standing[:3, 3])[[0, 2]], 0.0, atol=1e-12)


def test_approach_direction_and_frame_helpers() -> None:
    steep = np.array([0.3, 0.9, 0.1])
    assert np.allclose(approach_from_above(steep), steep / np.linalg.norm(steep))
    for d in ([1.0, 0.0, 0.0], [0.0, -0.5, -1.0], [0.2, -1.0, 0.0]):
        up = approach_from_above(np.array(d))
        assert np.isclose(np.linalg.norm(up), 1.0) and np.isclose(np.degrees(np.arcsin(up[1])), 20.0)
        flat = np.array([d[0], 0.0, d[2]])
        assert np.allclose(np.cross(up[[0, 2]], flat[[0, 2]]), 0.0)  # the same heading
        assert up[[0, 2]] @ flat[[0, 2]] > 0
    assert np.allclose(approach_from_above(np.array([0.0, -1.0, 0.0])), [0.0, 1.0, 0.0])
    rise = clearance_rise(np.array([0.1, 0.0, -0.01, -0.02]), 0.0, gap=0.002)
    assert np.allclose(rise, [0.0, 0.002, 0.012, 0.0])  # the grasp frame stays
    assert np.allclose(lift_offsets(0.1, 4), [0.025, 0.05, 0.075, 0.1])


def test_hands_option_and_the_old_side_key(tmp_path) -> None:
    assert GraspOptions().hands == "right" and GraspOptions().table
    assert GraspOptions(side="left").hands == "left"
    assert build_section(GraspOptions, {"side": "left"}, "r.yaml [grasp]").hands == "left"
    with pytest.raises(OptionError, match="--hands"):
        GraspOptions(hands="middle")
    with pytest.raises(OptionError, match="old name of hands"):
        GraspOptions(side="right", hands="left")
    with pytest.raises(OptionError, match="--lift"):
        GraspOptions(lift=-0.1)


def test_a_table_that_rejects_most_grasps_names_the_flag() -> None:
    stats = {"objects": 2, "evaluated": 9, "per_object": [], "reasons": {"table": 7, "contacts": 2}}
    assert "--no-table" in no_grasp_error(stats) and "\n" not in no_grasp_error(stats)


def test_run_json_counts_table_rejections(run) -> None:
    stats = filter_stats(run)
    assert stats["grasps_written"] == 6
    assert set(stats["reasons"]) <= {"penetration", "sim_displacement", "contacts", "table"}
    recorded = json.loads((run / "run.json").read_text())["grasp_filter"]
    assert recorded["evaluated"] == stats["evaluated"] and recorded["reasons"] == stats["reasons"]
    sides = stats["sides"]
    assert set(sides) == {"left", "right"}
    for k in ("evaluated", "accepted", "wanted"):
        assert sum(c[k] for c in sides.values()) == stats[k if k != "wanted" else "grasps_wanted"]
    per_side = print_report(run)["side"]
    written = {side: sum(r["hand_side"] == side and r["frame"] == 0 for r in read_index(run).to_pylist())
               for side in sides}  # fmt: skip
    assert {side: c["written"] for side, c in per_side.items()} == written

def test_a_left_grasp_renders_and_exports_as_left(tmp_path) -> None:
    """Downstream of a left grasp through the stages: the render's 2D joints lie on the drawn hand and
    every export (COCO, NOCS, BOP) names the side."""
    from hoigen.api import export, render
    from hoigen.export.options import ExportOptions
    from hoigen.render.options import RenderOptions

    quiet = Common(seed=1, quiet=True)
    grasp(None, tmp_path / "g", GraspOptions(categories=["mug"], grasps=1, frames=1, hands="left", candidates=8), quiet)
    render(tmp_path / "g", tmp_path / "r", RenderOptions(views=2, size=64), quiet)
    samples = [s for shard in list_shards(tmp_path / "r") for s in read_shard(shard)]
    assert samples
    for s in samples:
        ann, hand = s["ann.json"], np.asarray(s["seg.png"]) == 1
        assert ann["hand"]["side"] == "left" and hand.sum() > 20
        x0, y0, x1, y1 = ann["hand"]["bbox"]
        j = np.asarray(ann["hand"]["joints2d"])
        assert ((j[:, 0] >= x0 - 2) & (j[:, 0] <= x1 + 2) & (j[:, 1] >= y0 - 2) & (j[:, 1] <= y1 + 2)).mean() > 0.9
    for fmt in ("coco", "nocs", "bop"):
        export(tmp_path / "r", tmp_path / fmt, ExportOptions(format=fmt), quiet)
        sides = set()
        for path in (tmp_path / fmt).rglob("*.json"):
            text = path.read_text()
            sides |= {s for s in ("left", "right") if f'"{s}"' in text}
        assert sides == {"left"}, fmt

def test_a_left_hand_renders_as_the_mirror_image_of_the_right() -> None:
    """The left hand is the right one mirrored in x: rendered by a camera mirrored the same way, every
    map is the right hand's flipped left-right (seg, depth, normals with red reversed, skeleton) and
    so are the 2D joints, joint for joint (the skeleton is drawn from the left hand's own joints)."""
    from hoigen.render.cameras import Camera, intrinsics, look_at
    from hoigen.render.renderer import SceneSpec
    from hoigen.render.stage import _renderer

    size = 96
    renderer = _renderer(size, size)
    sphere = procedural_objects(["can"], seed=0)[0].mesh  # never in view: placed behind the camera
    out = {}
    for side, sign in (("right", 1.0), ("left", -1.0)):
        hand = load_hand(side)
        pose = hand.curl_pose([0.2, 0.4, 0.5, 0.6, 0.7])
        posed = hand.forward(hand_pose=pose, global_orient=[0.3, 0.5 * sign, 0.2 * sign])  # mirrored: (x, -y, -z)
        shift = np.array([0.02, -0.01, 0.0]) * [sign, 1, 1]
        eye, target = np.array([0.12 * sign, 0.1, 0.35]), np.array([0.0, 0.0, 0.0])
        camera = Camera(intrinsics(size, size, 50.0), look_at(eye, target), size, size)
        behind = np.eye(4)
        behind[:3, 3] = eye * 6
        out[side] = renderer.render(SceneSpec(
            posed.vertices[0] + shift, hand.faces, sphere, behind, np.eye(4), camera,
            posed.joints[0].astype(np.float64) + shift, mesh_key=("mirror", side),
        ))  # fmt: skip
    right, left = out["right"], out["left"]
    assert np.allclose(left.joints2d, np.c_[size - 1 - right.joints2d[:, 0], right.joints2d[:, 1]], atol=1e-3)
    assert np.array_equal(left.joints_visible, right.joints_visible)
    seg_r = right.seg[:, ::-1]
    assert (right.seg == 1).sum() > 300 and (left.seg == seg_r).mean() > 0.995
    both = (left.seg == 1) & (seg_r == 1)
    assert np.median(np.abs(left.depth_m[both] - right.depth_m[:, ::-1][both])) < 1e-4
    n_l, n_r = left.normal[both].astype(int), right.normal[:, ::-1][both].astype(int)
    assert np.median(np.abs(n_l[:, 0] - (255 - n_r[:, 0]))) <= 2 and np.median(np.abs(n_l[:, 1:] - n_r[:, 1:])) <= 2
    assert (np.abs(left.skeleton.astype(int) - right.skeleton[:, ::-1].astype(int)).max(axis=-1) < 8).mean() > 0.98
