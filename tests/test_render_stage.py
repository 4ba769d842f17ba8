"""The render stage: one camera per trajectory view, presets, amodal masks and boxes in the shards,
and out-of-view trajectories skipped with a logged reason."""

from __future__ import annotations

import copy
import logging

import numpy as np
import pytest

from hoigen.data.runner import StageContext
from hoigen.data.shards import list_shards, read_shard
from hoigen.errors import HoigenError
from hoigen.grasp.options import GraspOptions
from hoigen.options import Common
from hoigen.render.options import RenderOptions


@pytest.fixture(scope="module")
def grasp_samples(tmp_path_factory):
    from hoigen import api

    out = tmp_path_factory.mktemp("grasp")
    api.grasp(None, out, GraspOptions(grasps=1, frames=3, categories=["can"]), Common(quiet=True))
    samples = [s for shard in list_shards(out) for s in read_shard(shard)]
    assert len(samples) == 3
    return out, samples


def _render(grasp_samples, tmp_path, **options):
    from hoigen.data.contract import objects_dir_of
    from hoigen.render.stage import RenderInputs, render_stage

    folder, samples = grasp_samples
    opts = RenderOptions(**{"views": 2, "size": 64, "camera": "random", **options})
    inputs = RenderInputs(str(objects_dir_of(folder)), None)
    ctx = StageContext(stage="render", seed=7, options=opts, out_dir=tmp_path, inputs=inputs)
    return list(render_stage(copy.deepcopy(samples), ctx))


def test_one_camera_per_trajectory_view_and_new_members(grasp_samples, tmp_path):
    out = _render(grasp_samples, tmp_path)
    assert [s["__key__"][-6:] for s in out] == ["000_00", "000_01", "001_00", "001_01", "002_00", "002_01"]
    by_view = {}
    for s in out:
        cam = s["ann.json"]["camera"]
        by_view.setdefault(cam["view"], []).append(np.asarray(cam["world_to_cam"]))
        assert cam["preset"] == "random" and cam["width"] == 64 and 0 < cam["in_view"] <= 1
    assert all(np.array_equal(m, views[0]) for views in by_view.values() for m in views)  # fixed per trajectory
    assert not np.allclose(by_view[0][0], by_view[1][0])
    for s in out:
        ann, amodal, seg = s["ann.json"], s["amodal.png"], s["seg.png"]
        assert amodal.dtype == np.uint8 and amodal.shape == (64, 64)
        assert np.all((amodal[seg == 1] & 1) == 1) and np.all((amodal[seg == 2] & 2) == 2)
        ys, xs = np.nonzero(amodal & 2)
        assert ann["object"]["bbox"] == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
        ys, xs = np.nonzero(seg == 1)
        if len(xs):
            assert ann["hand"]["bbox_visible"] == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
        assert len(ann["hand"]["joints_self_occluded"]) == 21
    again = _render(grasp_samples, tmp_path)  # deterministic
    assert all(np.array_equal(a["normal.png"], b["normal.png"]) for a, b in zip(out, again, strict=True))


def test_preset_camera_in_the_stage(grasp_samples, tmp_path):
    out = _render(grasp_samples, tmp_path, views=1, size=48, camera="nocs-real275")
    K = np.asarray(out[0]["ann.json"]["camera"]["K"])
    assert out[0]["seg.png"].shape == (48, 48)
    assert K[0, 0] == pytest.approx(591.0125 * 48 / 480) and K[1, 1] == pytest.approx(590.16775 * 48 / 480)
    with pytest.raises(HoigenError, match="--camera"):
        RenderOptions(camera="kinect")
    assert RenderOptions(camera="dexycb").size is None


def test_out_of_view_trajectory_is_skipped_with_a_reason(grasp_samples, tmp_path, caplog):
    folder, samples = grasp_samples
    moved = copy.deepcopy(samples)
    for s in moved:  # the hand 100 m from the object: framing both at --fill needs a camera beyond the far plane
        ann = s["ann.json"]
        ann["hand"]["transl"] = (np.asarray(ann["hand"]["transl"]) + 100.0).tolist()
    with caplog.at_level(logging.WARNING, logger="hoigen.render"):
        out = _render((folder, moved), tmp_path, camera_tries=3, table=False, distractors=0)  # only the framing logs
    assert out == []
    reasons = [r.getMessage() for r in caplog.records if r.name == "hoigen.render" and "skipped" in r.getMessage()]
    assert len(reasons) == 2 and all("out of view" in r and "3 draws" in r for r in reasons)


def test_seeded_lights_per_trajectory_view(grasp_samples, tmp_path):
    lit = _render(grasp_samples, tmp_path)  # --lights random (default): seeded per trajectory view
    again = _render(grasp_samples, tmp_path)
    fixed = _render(grasp_samples, tmp_path, lights="fixed")
    assert all(np.array_equal(a["shade.png"], b["shade.png"]) for a, b in zip(lit, again, strict=True))
    assert any(not np.array_equal(a["shade.png"], b["shade.png"]) for a, b in zip(lit, fixed, strict=True))
    for a, b in zip(lit, fixed, strict=True):  # lights change the shade only
        for name in ("seg.png", "depth.png", "nocs.png", "normal.png", "amodal.png"):
            assert np.array_equal(a[name], b[name]), name
        assert np.array_equal(a["shade.png"].max(axis=2) > 0, a["seg.png"] > 0)
    # ann.json records the lights: one set per trajectory view, the same in every frame of the view
    from hoigen.render.scene import DEFAULT_LIGHTS, Light, sample_lights

    for s in fixed:
        rec = s["ann.json"]["lights"]
        assert rec["shading"] == "lambert" and rec["ambient"] == 0.25
        assert [Light(tuple(d), tuple(c)) for d, c in zip(rec["direction"], rec["color"], strict=True)] == list(
            DEFAULT_LIGHTS)
    per_view = {}
    for s in lit:
        rec = s["ann.json"]["lights"]
        per_view.setdefault(s["ann.json"]["camera"]["view"], []).append(rec)
        assert 1 <= len(rec["direction"]) == len(rec["color"]) <= 3
    assert all(r == recs[0] for recs in per_view.values() for r in recs) and len(per_view) == 2
    assert per_view[0][0] != per_view[1][0]
    from hoigen.data.schema import parse_key

    ctx = StageContext(stage="render", seed=7, options=None, out_dir=tmp_path)  # _render's seed
    for s in lit:  # the recorded lights are the seeded draw of the frame's trajectory view
        ids, rec = parse_key(s["__key__"]), s["ann.json"]["lights"]
        want = sample_lights(ctx.rng(ids["object"], ids["grasp"], s["ann.json"]["camera"]["view"], "lights"))
        assert np.allclose(rec["direction"], [w.direction for w in want], atol=1e-6)
        assert np.allclose(rec["color"], [w.color for w in want], atol=1e-6)
