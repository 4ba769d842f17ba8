"""Training as the original HOIDiffusion code does it: background swap vs the paper's loss, the hand-object crop
(training data and DexYCB ingest), normals estimated from depth (render and ingest alike), the background
buffer writer, and ``hoigen validate`` on ingest output."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import trimesh
from clirun import exit_code, run_hoigen

from hoigen.diffusion.options import TrainOptions
from hoigen.diffusion.tiny import build_tiny_pipeline
from hoigen.diffusion.train import ControlNetTrainer
from hoigen.diffusion.train_data import ExampleBatches
from hoigen.geometry.crop import hoi_box, hoi_crop
from hoigen.options import OptionError

SIZE = 32  # the tiny VAE's smallest input
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _examples(count: int, seed: int, prompt: str) -> list[dict]:
    """Examples with conditions in [0.25, 0.75] (a scenery batch's are blanked by the trainer itself)."""
    g = torch.Generator().manual_seed(seed)
    return [
        {
            "key": f"{prompt}-{i}",
            "image": torch.rand(3, SIZE, SIZE, generator=g) * 2 - 1,
            "conditions": torch.rand(9, SIZE, SIZE, generator=g) * 0.5 + 0.25,
            "prompt": f"{prompt} {i}",
        }
        for i in range(count)
    ]


class _Spy(ControlNetTrainer):
    """Records, per step, what the ControlNet saw (images, prompts, conditions), each loss and the total optimised."""

    def _setup(self) -> None:
        super()._setup()
        self.calls: list[dict] = []
        self.totals: list[float] = []
        objective, backward = self.objective, self.accelerator.backward
        loss_of, controlnet = objective.loss, objective.controlnet

        def loss(batch, blank, stream, step, rank):
            value = loss_of(batch, blank, stream, step, rank)
            self.calls[-1].update(step=step, stream=stream, image=batch["image"].clone(), prompt=list(batch["prompt"]),
                                  loss=float(value.detach()))  # fmt: skip
            return value

        def seeing(*args, **kwargs):
            self.calls.append({"cond": kwargs["controlnet_cond"].detach().clone()})
            return controlnet(*args, **kwargs)

        def recording_backward(total, **kwargs):
            self.totals.append(float(total.detach()))
            return backward(total, **kwargs)

        objective.loss, objective.controlnet = loss, seeing
        self.accelerator.backward = recording_backward


def test_swap_step_sees_scenery_and_zero_conditions_and_no_hoi_loss(tmp_path):
    data = ExampleBatches(_examples(4, 0, "a hand grasping a mug"), 2, seed=0)
    scenery = ExampleBatches(_examples(4, 7, "a quiet forest"), 2, seed=0, name="background")
    options = TrainOptions(steps=10, lr=1e-3, bg_prob=0.4, checkpoint_every=0)
    assert options.bg_mode == "swap" and options.text_dropout == 0.0  # the original code's defaults
    trainer = _Spy(build_tiny_pipeline(0), options, tmp_path / "m", seed=3)
    stats = trainer.train(data, bg_batches=scenery)
    swapped = stats["bg_steps"]
    assert 0 < len(swapped) < 10, swapped  # seed 3 draws both kinds of step
    assert len(trainer.calls) == 10 and len(trainer.totals) == 10  # one forward per step: no extra HOI pass
    for call, total in zip(trainer.calls, trainer.totals, strict=True):
        step = call["step"]
        assert total == pytest.approx(call["loss"], rel=1e-6)  # the step optimises only its one loss
        if step in swapped:
            assert call["stream"] == "background" and torch.count_nonzero(call["cond"]) == 0
            expected = scenery.batch(step - 1)
            assert torch.equal(call["image"], expected["image"]) and call["prompt"] == expected["prompt"]
            assert all(p.startswith("a quiet forest") for p in call["prompt"])
        else:
            assert call["stream"] == "data" and float(call["cond"].min()) >= 0.25  # the data's own conditions
            assert all(p.startswith("a hand grasping a mug") for p in call["prompt"])
    assert len(stats["losses"]) == 10 - len(swapped) and len(stats["bg_losses"]) == len(swapped)
    assert stats["bg_prob"] == 0.4 and stats["bg_every"] == 0 and stats["bg_weight"] == 0.0
    # The draw is a function of (seed, step): a second run swaps the same steps.
    again = _Spy(build_tiny_pipeline(0), options, tmp_path / "again", seed=3).train(data, bg_batches=scenery)
    assert again["bg_steps"] == swapped and again["losses"] == stats["losses"]


def test_loss_step_adds_the_weighted_background_term(tmp_path):
    data = ExampleBatches(_examples(4, 0, "a hand grasping a mug"), 2, seed=0)
    scenery = ExampleBatches(_examples(2, 7, "a quiet forest"), 2, seed=0, name="background")
    options = TrainOptions(steps=4, lr=1e-3, bg_mode="loss", bg_every=2, bg_weight=0.5, checkpoint_every=0)
    trainer = _Spy(build_tiny_pipeline(0), options, tmp_path / "m", seed=3)
    stats = trainer.train(data, bg_batches=scenery)
    assert stats["bg_steps"] == [2, 4] and len(stats["losses"]) == 4
    by_step: dict[int, dict[str, dict]] = {}
    for call in trainer.calls:
        by_step.setdefault(call["step"], {})[call["stream"]] = call
    for step, total in zip(range(1, 5), trainer.totals, strict=True):
        hoi = by_step[step]["data"]
        if step % 2:
            assert set(by_step[step]) == {"data"} and total == pytest.approx(hoi["loss"], rel=1e-6)
        else:
            bg = by_step[step]["background"]
            assert torch.count_nonzero(bg["cond"]) == 0 and torch.count_nonzero(hoi["cond"]) > 0
            assert total == pytest.approx(hoi["loss"] + 0.5 * bg["loss"], rel=1e-5)
            assert bg["loss"] > 0
    assert stats["bg_weight"] == 0.5 and stats["bg_every"] == 2 and stats["bg_prob"] == 0.0


def test_background_options_belong_to_their_mode(capsys):
    with pytest.raises(OptionError, match="--bg-every applies to --bg-mode loss only"):
        TrainOptions(bg_every=5)
    with pytest.raises(OptionError, match="--bg-weight applies to --bg-mode loss only"):
        TrainOptions(bg_weight=1.0)
    with pytest.raises(OptionError, match="--bg-prob applies to --bg-mode swap only"):
        TrainOptions(bg_mode="loss", bg_prob=0.1)
    with pytest.raises(OptionError, match="--bg-prob must be below 1"):
        TrainOptions(bg_prob=1.0)
    assert TrainOptions().swap_prob == 0.1 and TrainOptions(bg_mode="loss").loss_every == 10
    assert not TrainOptions(bg_mode="loss", bg_weight=0.0).uses_background
    code, err = run_hoigen("train", "--bg-weight", "2", "--in", "nowhere", capsys=capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "--bg-mode loss" in err


# ---------------------------------------------------------------------------------------- crop
@pytest.mark.parametrize("box", [(3, 40, 20, 90), (0, 0, 100, 60), (90, 5, 100, 95), (30, 70, 31, 71)])
def test_hoi_crop_keeps_the_whole_box_and_pads_to_a_square(box):
    seg = np.zeros((100, 120), np.uint8)
    x0, y0, x1, y1 = box
    seg[y0:y1, x0:x1] = 1
    seg[y0, x0] = 2  # the object counts too
    seg[0:2, 115:120] = 3  # another object does not
    assert hoi_box(seg) == box
    window = hoi_crop(seg, size=None)
    assert window.x0 <= x0 and window.y0 <= y0 and window.x0 + window.side >= x1 and window.y0 + window.side >= y1
    assert window.side >= max(x1 - x0, y1 - y0) * 1.2 - 1e-9  # 10% margin on each side
    cropped = window.apply(seg, nearest=True)
    assert cropped.shape == (window.side, window.side)
    assert np.count_nonzero(np.isin(cropped, (1, 2))) == np.count_nonzero(np.isin(seg, (1, 2)))  # all of the box
    scaled = hoi_crop(seg, size=64)
    assert scaled.apply(seg, nearest=True).shape == (64, 64)
    # Points follow: the box corners land inside the scaled image.
    corners = scaled.points(np.array([[x0 - 0.5, y0 - 0.5], [x1 - 0.5, y1 - 0.5]]))
    assert np.all(corners >= -0.5 - 1e-9) and np.all(corners <= 63.5 + 1e-9)


def test_training_examples_crop_to_the_hand_object_box(tmp_path):
    from hoigen.data.shards import write_shard
    from hoigen.diffusion.train_data import ShardExamples

    seg = np.zeros((60, 80), np.uint8)
    seg[30:50, 50:70] = 1
    seg[40:55, 60:75] = 2
    image = np.zeros((60, 80, 3), np.uint8)
    image[seg > 0] = 255  # white hand and object on black
    sample = {"__key__": "mug_0000_000_00", "ann.json": {"object": {"category": "mug"}}, "image.jpg": image,
              "normal.png": image, "seg.png": seg, "skeleton.png": np.zeros_like(image)}  # fmt: skip
    shard = tmp_path / "shard-000000.tar"
    write_shard(shard, [sample])
    whole = ShardExamples([shard], SIZE)[0]
    cropped = ShardExamples([shard], SIZE, crop="hoi")[0]
    # The box (25x25 of 80x60) fills most of the cropped square, a small part of the whole frame.
    fill_whole = float((whole["image"][0] > 0).float().mean())
    fill_cropped = float((cropped["image"][0] > 0).float().mean())
    assert fill_whole < 0.2 and fill_cropped > 0.45, (fill_whole, fill_cropped)
    assert cropped["image"].shape == (3, SIZE, SIZE) and cropped["conditions"].shape == (9, SIZE, SIZE)


def test_ingest_crop_hoi_keeps_the_box_and_k_and_joints_follow(tmp_path):
    import yaml
    from test_ingest import HAND_BOX, MUG_BOX, PLANE_NORMAL, SEQUENCE, SERIAL, make_fake_dexycb

    from hoigen.data.shards import list_shards, read_shard
    from hoigen.geometry.crop import SquareCrop

    root = make_fake_dexycb(tmp_path / "dexycb")
    out = tmp_path / "ingest"
    assert exit_code("ingest", "dexycb", root, "--out", out, "--crop", "hoi", "-q") == 0
    color = yaml.safe_load((root / "calibration" / "intrinsics" / f"{SERIAL}_640x480.yml").read_text())["color"]
    K_raw = np.array([[color["fx"], 0, color["ppx"]], [0, color["fy"], color["ppy"]], [0, 0, 1.0]])
    samples = [s for shard in list_shards(out) for s in read_shard(shard)]
    assert len(samples) == 2
    for sample in samples:
        ann = sample["ann.json"]
        crop = ann["dexycb"]["crop"]
        assert crop["mode"] == "hoi"
        window = SquareCrop(*crop["offset"], crop["side"], crop["side"])
        hand_area = (HAND_BOX[1] - HAND_BOX[0]) * (HAND_BOX[3] - HAND_BOX[2])
        mug_area = (MUG_BOX[1] - MUG_BOX[0]) * (MUG_BOX[3] - MUG_BOX[2])
        seg = sample["seg.png"]
        assert seg.shape == (crop["side"], crop["side"]) == (ann["camera"]["height"], ann["camera"]["width"])
        assert np.count_nonzero(seg == 1) == hand_area and np.count_nonzero(seg == 2) == mug_area  # whole box
        K = np.asarray(ann["camera"]["K"])
        # A 3D joint projected with the new K lands where the crop moved its projection with the old K.
        for point in np.asarray(ann["hand"]["joints3d"]):
            uv_raw = (K_raw @ point)[:2] / point[2]
            uv_new = (K @ point)[:2] / point[2]
            assert np.allclose(uv_new, window.points(uv_raw[None])[0], atol=1e-9)
        frame = ann["dexycb"]["frame"]
        label = np.load(root / SEQUENCE / SERIAL / f"labels_{frame:06d}.npz")
        raw = label["joint_2d"].reshape(21, 2).astype(np.float64)
        annotated = np.all(raw != -1, axis=1)
        assert np.allclose(np.asarray(ann["hand"]["joints2d"])[annotated], window.points(raw[annotated]), atol=1e-4)
        # Normals come from the cropped depth with the new K: the fake plane's normal (up to millimetre depth
        # and 8-bit colour); the old K on the cropped pixels would shear the plane by several degrees.
        n = 1.0 - 2.0 * sample["normal.png"][seg == 1].astype(np.float64) / 255.0
        n /= np.linalg.norm(n, axis=1, keepdims=True)
        angle = np.degrees(np.arccos(np.clip(n @ PLANE_NORMAL, -1, 1)))
        assert np.median(angle) < 1.0 and angle.max() < 3.0, (np.median(angle), angle.max())


# ---------------------------------------------------------------------------------------- normals
@pytest.mark.parametrize(
    "mesh",
    [trimesh.creation.icosphere(subdivisions=4, radius=0.1), trimesh.creation.cylinder(radius=0.06, height=0.2,
                                                                                       sections=64)],
    ids=["sphere", "cylinder"],
)  # fmt: skip
def test_estimated_normals_match_rendered_normals_on_smooth_surfaces(mesh):
    """render --normals estimated (hoigen.geometry.normals on the rendered depth) against the meshes' normals."""
    from test_render import _cached, _nocs_from_mesh

    from hoigen.render.cameras import Camera, intrinsics, look_at
    from hoigen.render.renderer import SceneSpec
    from hoigen.render.stage import estimated_normals

    size = 128
    cam = Camera(intrinsics(size, size, 45.0), look_at(np.array([0.05, 0.2, 0.4]), np.zeros(3)), size, size)
    far_hand = (np.array([[0, 0, 5.0], [0.001, 0, 5.0], [0, 0.001, 5.0]]), np.array([[0, 1, 2]]))
    spec = SceneSpec(*far_hand, mesh, np.eye(4), _nocs_from_mesh(mesh), cam, np.zeros((21, 3)))
    result = _cached(size, size).render(spec)
    estimated = estimated_normals(result)
    surface = result.seg == 2
    assert surface.sum() > 2000
    assert np.all(estimated[surface].sum(axis=1) > 0) and np.all(estimated[~surface] == 0)  # every pixel has one

    def unit(rgb: np.ndarray) -> np.ndarray:
        n = 1.0 - 2.0 * rgb[surface].astype(np.float64) / 255.0
        return n / np.linalg.norm(n, axis=1, keepdims=True)

    angle = np.degrees(np.arccos(np.clip(np.sum(unit(estimated) * unit(result.normal), axis=1), -1, 1)))
    assert np.median(angle) < 3.0, np.median(angle)  # measured at 128 px: sphere 1.4, cylinder 0.4 deg


def test_render_normals_option():
    from hoigen.render.options import RenderOptions

    assert RenderOptions().normals == "rendered" and RenderOptions(normals="estimated").normals == "estimated"
    with pytest.raises(OptionError, match="--normals must be one of rendered, estimated"):
        RenderOptions(normals="midas")


# ---------------------------------------------------------------------------------------- backgrounds
def test_backgrounds_writes_a_buffer_that_bg_dir_reads(tmp_path, capsys):
    import hoigen
    from hoigen.diffusion.train_data import background_examples

    prompts = tmp_path / "scenery.txt"
    prompts.write_text("a quiet forest\n# not a prompt\na city street at night\n")
    out = tmp_path / "scenery"
    summary = hoigen.api.backgrounds(out, prompts=prompts, steps=2, images_per_prompt=2, batch_size=3, seed=1,
                                     quiet=True)  # fmt: skip
    assert summary.stats["images"] == 4
    names = sorted(p.name for p in out.glob("*.png"))
    assert names == [f"bg-{i:06d}.png" for i in range(4)]
    record = json.loads((out / "backgrounds.json").read_text())
    assert record["model"]["model"] == "tiny-random" and record["seed"] == 1
    examples = background_examples(out, SIZE)
    assert [e["prompt"] for e in examples] == ["a quiet forest"] * 2 + ["a city street at night"] * 2
    assert all(e["image"].shape == (3, SIZE, SIZE) and torch.count_nonzero(e["conditions"]) == 0 for e in examples)
    # Seeded per image: another batch size paints the same pictures.
    again = tmp_path / "again"
    hoigen.api.backgrounds(again, prompts=prompts, steps=2, images_per_prompt=2, batch_size=1, seed=1, quiet=True)
    for name in names:
        from PIL import Image

        a, b = np.asarray(Image.open(out / name)), np.asarray(Image.open(again / name))
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 1
    assert not np.array_equal(np.asarray(Image.open(out / names[0])), np.asarray(Image.open(out / names[1])))
    # Usage errors: one line each.
    code, err = run_hoigen("backgrounds", "--prompts", prompts, "--out", out, capsys=capsys)
    assert code == 1 and "not an empty folder" in err and len(err.strip().splitlines()) == 1
    code, err = run_hoigen("backgrounds", "--out", tmp_path / "new", capsys=capsys)
    assert code == 2 and "--prompts is required" in err


# ---------------------------------------------------------------------------------------- validate
def test_validate_understands_ingest_output(tmp_path, capsys):
    from test_ingest import make_fake_dexycb

    from hoigen.data.shards import list_shards, read_shard
    from hoigen.data.validate import check_sample, validate

    root = make_fake_dexycb(tmp_path / "dexycb")
    out = tmp_path / "ingest"
    assert exit_code("ingest", "dexycb", root, "--out", out, "--size", "48", "-q") == 0
    report = validate(out)
    assert report.ok and report.stage == "ingest" and report.samples == 2, report.problems
    code, _ = run_hoigen("validate", out, capsys=capsys)
    assert code == 0
    # The ingest checks still find real problems.
    raw = next(iter(read_shard(list_shards(out)[0], decode=False)))
    assert list(check_sample(raw, "ingest")) == []
    broken = {k: v for k, v in raw.items() if k != "normal.png"}
    ann = json.loads(raw["ann.json"])
    ann["hand"]["pose_pca"] = [0.0] * 3  # hand_pose is null (no --mano-dir), so pose_pca must hold 45
    ann["camera"]["K"] = [[1, 0], [0, 1]]
    broken["ann.json"] = json.dumps(ann).encode()
    problems = list(check_sample(broken, "ingest"))
    assert "member normal.png is missing" in problems
    assert "ann.json hand.pose_pca has shape [3], expected [45]" in problems
    assert any("camera.K has shape" in p for p in problems)


class _Stop(Exception):
    pass


def test_swap_mode_resumes_exactly(tmp_path):
    """The scenery steps are a function of (seed, step), so a resumed run swaps the same steps, same losses."""
    options = TrainOptions(steps=6, lr=1e-3, bg_prob=0.4, checkpoint_every=3, keep_checkpoints=1)

    def sources() -> tuple[ExampleBatches, ExampleBatches]:
        return (ExampleBatches(_examples(4, 0, "a hand grasping a mug"), 2, seed=0),
                ExampleBatches(_examples(4, 7, "a quiet forest"), 2, seed=0, name="background"))  # fmt: skip

    data, scenery = sources()
    whole = ControlNetTrainer(build_tiny_pipeline(0), options, tmp_path / "whole", seed=3).train(data, scenery)

    def crash(entry: dict) -> None:
        if entry["step"] == 5:
            raise _Stop

    data, scenery = sources()
    with pytest.raises(_Stop):
        ControlNetTrainer(build_tiny_pipeline(0), options, tmp_path / "cut", seed=3).train(data, scenery, log=crash)
    data, scenery = sources()
    resumed = ControlNetTrainer(build_tiny_pipeline(0), options, tmp_path / "cut", seed=3).train(data, scenery)
    assert resumed["resumed_at_step"] == 3 and 0 < len(whole["bg_steps"]) < 6
    for key in ("bg_steps", "losses", "bg_losses"):
        assert resumed[key] == whole[key], key
