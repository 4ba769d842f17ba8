"""Umeyama fitting and the NOCS metrics on constructed poses with known answers; ``hoigen eval pose``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from hoigen.errors import HoigenError
from hoigen.pose.files import instance, read_pose_file, write_pose_file
from hoigen.pose.metrics import average_precision, evaluate, iou_3d, rotation_error_deg
from hoigen.pose.umeyama import umeyama

ROT = Rotation.from_euler("xyz", [20, -35, 50], degrees=True).as_matrix()
SIZE = np.array([0.6, 0.5, 0.62]) / np.linalg.norm([0.6, 0.5, 0.62])


def test_umeyama_recovers_a_similarity_and_survives_trimming_of_outliers() -> None:
    rng = np.random.default_rng(0)
    src = rng.uniform(-0.5, 0.5, (200, 3))
    dst = 0.23 * src @ ROT.T + [0.05, -0.02, 0.6]
    fit = umeyama(src, dst)
    assert (
        np.allclose(fit.R, ROT, atol=1e-9) and fit.s == pytest.approx(0.23) and np.allclose(fit.t, [0.05, -0.02, 0.6])
    )
    mirrored = umeyama(src, dst * [1, 1, -1])  # a reflection is never returned as a rotation
    assert np.linalg.det(mirrored.R) == pytest.approx(1.0)
    with pytest.raises(HoigenError):
        umeyama(src[:2], dst[:2])


def _gt(cls: str = "mug") -> dict:
    return instance(cls, ROT, [0.02, -0.01, 0.55], 0.2, SIZE)


def _perturb(inst: dict, rot_deg: float = 0.0, axis: str = "x", shift_cm: float = 0.0, **extra: object) -> dict:
    R = np.asarray(inst["R"]) @ Rotation.from_euler(axis, rot_deg, degrees=True).as_matrix()
    t = np.asarray(inst["t"]) + [shift_cm / 100, 0, 0]
    return instance(inst["class"], R, t, inst["s"], inst["size"], **extra)


def test_metrics_are_perfect_on_ground_truth_against_itself() -> None:
    gt = {f"img{i}": [_gt(c)] for i, c in enumerate(["mug", "can", "bowl", "bottle", "laptop"])}
    result = evaluate(gt, gt)
    for name in ("iou25", "iou50", "5deg2cm", "5deg5cm", "10deg2cm", "10deg5cm"):
        assert result[name] == 100.0
    assert set(result["per_class"]) == {"mug", "can", "bowl", "bottle", "laptop"}


def test_a_ten_degree_rotation_fails_5deg_and_passes_10deg() -> None:
    gt = {"a": [_gt()]}
    assert rotation_error_deg(_perturb(gt["a"][0], 10)["R"], gt["a"][0]["R"]) == pytest.approx(10.0)
    r = evaluate({"a": [_perturb(gt["a"][0], 10)]}, gt)
    assert r["5deg2cm"] == 0 and r["5deg5cm"] == 0 and r["10deg2cm"] == 100 and r["10deg5cm"] == 100
    r = evaluate({"a": [_perturb(gt["a"][0], 3, shift_cm=3)]}, gt)
    assert r["5deg2cm"] == 0 and r["5deg5cm"] == 100 and r["10deg2cm"] == 0 and r["10deg5cm"] == 100


def test_symmetric_classes_ignore_rotation_about_y() -> None:
    for cls, expect in (("can", 100), ("bottle", 100), ("bowl", 100), ("mug", 0)):
        gt = {"a": [_gt(cls)]}
        r = evaluate({"a": [_perturb(gt["a"][0], 40, axis="y")]}, gt)
        assert r["5deg2cm"] == expect, cls
    gt = {"a": [{**_gt("mug"), "handle_visible": False}]}
    assert evaluate({"a": [_perturb(gt["a"][0], 40, axis="y")]}, gt)["5deg2cm"] == 100


def test_3d_iou_of_a_half_shifted_box_is_one_third() -> None:
    box = instance("laptop", np.eye(3), [0, 0, 0.5], 1.0, [0.1, 0.1, 0.1])
    shifted = _perturb(box, shift_cm=5)
    assert iou_3d(shifted, box) == pytest.approx(1 / 3)
    r = evaluate({"a": [shifted]}, {"a": [box]})
    assert r["iou25"] == 100 and r["iou50"] == 0


def test_average_precision_counts_misses_and_false_positives() -> None:
    assert average_precision([0.9, 0.8], [True, False], 1) == pytest.approx(1.0)
    assert average_precision([0.9, 0.8], [False, True], 1) == pytest.approx(0.5)
    assert average_precision([0.9], [True], 2) == pytest.approx(0.5)
    gt = {"a": [_gt()], "b": [_gt()]}
    r = evaluate({"a": [_gt()]}, gt)  # one image without a prediction: half the recall
    assert r["iou50"] == pytest.approx(50.0)


def test_eval_pose_cli_prints_and_writes_the_table(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from hoigen.cli import main

    gt = {"train/00000/0000": [_gt()]}
    write_pose_file(tmp_path / "gt.json", gt)
    write_pose_file(tmp_path / "pred.json", {"train/00000/0000": [_perturb(gt["train/00000/0000"][0], 10)]})
    assert read_pose_file(tmp_path / "gt.json") == json.loads(json.dumps(gt))
    argv = sys.argv
    sys.argv = [
        "hoigen",
        "eval",
        "pose",
        str(tmp_path / "pred.json"),
        str(tmp_path / "gt.json"),
        "--json",
        str(tmp_path / "r.json"),
    ]
    try:
        with pytest.raises(SystemExit) as exc:
            main()
    finally:
        sys.argv = argv
    assert exc.value.code in (0, None)
    assert "10deg5cm" in capsys.readouterr().out
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["5deg5cm"] == 0 and result["10deg5cm"] == 100
    (tmp_path / "bad.json").write_text('{"format": "hoigen-pose-v1", "images": {"x": [{"class": "mug"}]}}')
    with pytest.raises(HoigenError, match="lacks R, t, s, size"):
        read_pose_file(tmp_path / "bad.json")
