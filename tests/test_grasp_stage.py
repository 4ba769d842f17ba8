"""The grasp stage writes only accepted grasps: exactly --grasps when the filters are loose, a
one-line error naming the flag when nobody passes, and the counts in run.json."""

from __future__ import annotations

import json

import pytest

from hoigen.api import grasp
from hoigen.data.index import read_index
from hoigen.errors import HoigenError
from hoigen.grasp.options import GraspOptions
from hoigen.options import Common


def test_loose_filter_gives_exactly_the_grasps_asked_for(tmp_path) -> None:
    opts = GraspOptions(
        categories=["can"], grasps=3, frames=1, candidates=4, max_penetration=50.0, max_sim_displacement=500.0,
        min_contacts=0,
    )  # fmt: skip
    grasp(None, tmp_path, opts, Common(seed=1, quiet=True))
    rows = read_index(tmp_path).to_pylist()
    assert sorted(r["grasp"] for r in rows) == [0, 1, 2]  # keys contiguous per object
    assert all(r["grasp_accepted"] for r in rows)
    stats = json.loads((tmp_path / "run.json").read_text())["grasp_filter"]
    assert stats["grasps_written"] == stats["grasps_wanted"] == 3 and stats["objects_short"] == 0
    assert stats["accepted"] == 3 and stats["rounds"] == 1 and stats["candidates"] == 4


def test_a_filter_nobody_passes_fails_in_one_line(tmp_path) -> None:
    opts = GraspOptions(categories=["can"], grasps=1, frames=1, candidates=3, max_rounds=2, min_contacts=5,
                        max_penetration=0.0, max_sim_displacement=0.0)  # fmt: skip
    with pytest.raises(HoigenError) as err:
        grasp(None, tmp_path, opts, Common(seed=1, quiet=True))
    msg = str(err.value)
    assert "\n" not in msg and "no accepted grasp" in msg and "loosen --m" in msg
    stats = json.loads((tmp_path / "run.json").read_text())["grasp_filter"]
    # both rounds ran and every candidate is counted as rejected
    assert stats["rounds"] == 2 and stats["candidates"] == 6
    assert stats["evaluated"] == stats["rejected"] == 6 and stats["grasps_written"] == 0
    assert stats["short"] == [
        {"object": stats["short"][0]["object"], "wanted": 1, "written": 0, "evaluated": 6, "accepted": 0, "hint": None}
    ]
