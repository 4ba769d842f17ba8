"""``hoigen assets show`` writes one PNG of the hand in a few poses and of every object category."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from clirun import exit_code

from hoigen.assets_preview import COLUMNS, hand_items, picture_size


def test_assets_show_writes_a_picture_of_the_expected_size(tmp_path: Path) -> None:
    out = tmp_path / "assets.png"
    assert exit_code("assets", "show", "--out", out, "--tile", "64") == 0
    image = cv2.imread(str(out), cv2.IMREAD_COLOR)
    assert image is not None and (image.shape[1], image.shape[0]) == picture_size(64)
    assert image.shape[1] == COLUMNS * 64
    # Every hand tile shows something skin-coloured on the white background.
    for k in range(6):
        tile = image[:64, k * 64 : (k + 1) * 64].astype(int)
        skin = (tile[..., 2] > tile[..., 0] + 40)  # red clearly above blue (BGR)
        assert skin.mean() > 0.03, k
    assert (image[64:] < 250).any()  # the object rows are drawn too


def test_assets_show_refuses_other_formats(tmp_path: Path) -> None:
    assert exit_code("assets", "show", "--out", tmp_path / "assets.jpg") != 0


def test_hand_items_cover_the_poses() -> None:
    items = hand_items()
    assert [i.label.split(": ")[-1] for i in items] == [
        "flat", "half curl", "fist (limits)", "PCA sample 1", "PCA sample 2", "left, half curl"]  # fmt: skip
    flat, fist = items[0].vertices, items[2].vertices
    assert np.ptp(fist[:, 0]) < 0.75 * np.ptp(flat[:, 0])  # the fist is shorter than the flat hand
    with pytest.raises(AssertionError):
        np.testing.assert_allclose(items[3].vertices, items[4].vertices)
