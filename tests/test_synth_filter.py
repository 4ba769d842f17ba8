"""``synthesize --min-pck``: repaint an image that disagrees with its labels, drop a sample that never agrees.

A fake detector (this module's :func:`make_fake`, loaded through ``--filter-detector module:factory``)
"detects" the labelled hand exactly when the painted image's mean exceeds ``THRESHOLD`` and logs the mean
of every image it sees, so the test knows which first paintings must fail without the real MediaPipe.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from clirun import run_hoigen as hoigen
from synthetic import render_ann

import hoigen as hg
from hoigen.data.shards import ShardWriter, list_shards, read_shard
from hoigen.diffusion.stage import FILTER_DIR, image_seed
from hoigen.imgeval.agreement import FAIL, PASS, UNJUDGED, Detection, verdict

SIZE = 32
FAKE = f"{__name__}:make_fake"
JOINTS = np.stack([np.linspace(8, 24, 21), np.linspace(10, 22, 21)], axis=1)  # every sample's labelled joints
HIDDEN_KEY = "can-2_0000_002_01"  # its hand has 5 visible joints: not judged
THRESHOLD = {"mean": -1.0}
SEEN: list[float] = []  # the mean of every image the fake looked at, in order

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class FakeDetector:
    """Finds the labelled hand (PCK 1) when the image mean exceeds THRESHOLD, else nothing."""

    name = "fake-mean-threshold"

    def __call__(self, image: np.ndarray) -> list[Detection]:
        mean = float(image.mean())
        SEEN.append(mean)
        return [Detection(joints=JOINTS.copy(), side="right", side_score=1.0)] if mean > THRESHOLD["mean"] else []


def make_fake() -> FakeDetector:
    return FakeDetector()




@pytest.fixture(scope="module")
def render_dir(tmp_path_factory) -> Path:
    """Two shards of three samples (two objects); one sample's hand is mostly hidden."""
    folder = tmp_path_factory.mktemp("render")
    rng = np.random.default_rng(0)
    for shard, view in ((0, 0), (1, 1)):
        with ShardWriter(folder / f"shard-{shard:06d}.tar") as writer:
            for frame in range(3):
                key = f"{'mug-1' if frame < 2 else 'can-2'}_0000_{frame:03d}_{view:02d}"
                seg = np.zeros((SIZE, SIZE), np.uint8)
                seg[6:26, 8:24] = 1
                writer.write({
                    "__key__": key,
                    "normal.png": rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8),
                    "seg.png": seg,
                    "skeleton.png": np.zeros((SIZE, SIZE, 3), np.uint8),
                    "ann.json": render_ann(key, frame, 3, SIZE, JOINTS, 5 if key == HIDDEN_KEY else 21,
                                           bbox=[6, 8, 26, 24]),
                })
    (folder / "run.json").write_text(json.dumps({"stage": "render"}))
    (folder / "objects.parquet").write_bytes(b"")
    return folder


def _run(render_dir: Path, out: Path, **filt) -> dict:
    hg.synthesize(render_dir, out, steps=1, size=SIZE, batch_size=2, quiet=True, **filt)
    return json.loads((out / "run.json").read_text())


def _samples(folder: Path) -> dict[str, dict]:
    return {s["__key__"]: s for shard in list_shards(folder) for s in read_shard(shard)}


def test_verdict_rule_on_constructed_rows() -> None:
    row = {"visible_joints": 21, "detected": True, "pck@0.05": 0.2, "pck@0.1": 0.6, "pck@0.2": 0.9}
    assert verdict(row, 0.8) == PASS and verdict(row, 0.95) == FAIL
    assert verdict(row, 0.5, pck_at=0.1) == PASS and verdict(row, 0.5, pck_at=0.05) == FAIL
    assert verdict({**row, "detected": False, "pck@0.2": float("nan")}, 0.0) == FAIL  # a visible hand not found
    assert verdict({**row, "pck@0.2": float("nan")}, 0.0) == FAIL
    assert verdict({**row, "visible_joints": 10, "detected": False}, 0.5) == UNJUDGED  # too hidden to judge
    assert verdict({**row, "visible_joints": 11, "detected": False}, 0.5) == FAIL


def test_filter_keeps_first_paintings_when_all_agree(render_dir, tmp_path) -> None:
    THRESHOLD["mean"] = -1.0
    plain = _run(render_dir, tmp_path / "plain")
    SEEN.clear()
    run = _run(render_dir, tmp_path / "kept", min_pck=0.5, max_tries=3, filter_detector=FAKE)
    assert len(SEEN) == 6 and "image_filter" not in plain
    stats = run["image_filter"]
    counts = [stats[n] for n in ("samples", "kept", "dropped", "repainted", "paintings")]
    assert counts == [6, 6, 0, 0, 6]
    assert stats["unjudged"] == 1 and stats["detector"] == "fake-mean-threshold"
    assert set(stats["per_object"]) == {"mug-1", "can-2"} and stats["per_object"]["can-2"]["samples"] == 2
    a, b = _samples(tmp_path / "plain"), _samples(tmp_path / "kept")
    for key, sample in b.items():  # first tries are the unfiltered images, byte for byte
        assert sample["gen.json"]["try"] == 0 and np.array_equal(sample["image.jpg"], a[key]["image.jpg"])
        check = sample["gen.json"]["agreement"]
        assert check["pck@0.2"] == 1.0 and check["detected"] is True
        assert sample["gen.json"]["verdict"] == (UNJUDGED if key == HIDDEN_KEY else PASS)
    assert b[HIDDEN_KEY]["gen.json"]["filter"] == {"min_pck": 0.5, "pck_at": 0.2, "max_tries": 3,
                                                   "detector": "fake-mean-threshold"}


def test_filter_drops_samples_that_never_agree(render_dir, tmp_path) -> None:
    THRESHOLD["mean"] = 256.0  # nothing is ever found
    SEEN.clear()
    run = _run(render_dir, tmp_path / "none", min_pck=0.0, max_tries=2, filter_detector=FAKE)
    stats = run["image_filter"]
    assert (stats["samples"], stats["kept"], stats["dropped"], stats["paintings"]) == (6, 1, 5, 11)
    assert len(SEEN) == 11  # each judged image painted twice, the hidden hand once
    kept = _samples(tmp_path / "none")
    assert list(kept) == [HIDDEN_KEY] and kept[HIDDEN_KEY]["gen.json"]["verdict"] == UNJUDGED
    assert sorted(p.name for p in (tmp_path / "none" / FILTER_DIR).iterdir()) == [
        "shard-000000.json", "shard-000001.json"]
    assert len(list_shards(tmp_path / "none")) == 2  # shard i still comes from input shard i (shard 0 empty)


def test_filter_repaints_with_derived_seeds_and_reruns_byte_identical(render_dir, tmp_path) -> None:
    THRESHOLD["mean"] = -1.0
    SEEN.clear()
    _run(render_dir, tmp_path / "probe", min_pck=0.5, filter_detector=FAKE)
    keys = sorted(_samples(tmp_path / "probe"))
    first = dict(zip(_order(tmp_path / "probe"), SEEN, strict=True))
    judged = sorted(m for k, m in first.items() if k != HIDDEN_KEY)
    THRESHOLD["mean"] = (judged[1] + judged[2]) / 2  # the two darkest first paintings must be repainted
    must_repaint = {k for k, m in first.items() if k != HIDDEN_KEY and m <= THRESHOLD["mean"]}
    assert len(must_repaint) == 2 and len(keys) == 6

    runs = []
    for name in ("a", "b"):
        runs.append(_run(render_dir, tmp_path / name, min_pck=0.5, max_tries=4, filter_detector=FAKE))
    shards = [[p.read_bytes() for p in list_shards(tmp_path / name)] for name in ("a", "b")]
    assert shards[0] == shards[1]
    assert runs[0]["image_filter"] == runs[1]["image_filter"]
    stats = runs[0]["image_filter"]
    assert stats["repainted"] + stats["dropped"] == 2 and stats["kept"] == 6 - stats["dropped"]
    out = _samples(tmp_path / "a")
    for key, sample in out.items():
        gen = sample["gen.json"]
        assert gen["seed"] == image_seed(0, key, 0, gen["try"])
        assert (gen["try"] > 0) == (key in must_repaint)
        assert gen["verdict"] in (PASS, UNJUDGED)
    assert set(keys) - set(out) <= must_repaint  # only failed first paintings can be dropped
    first_tries = {k: s["image.jpg"] for k, s in _samples(tmp_path / "probe").items()}
    for key in set(out) - must_repaint:
        assert np.array_equal(out[key]["image.jpg"], first_tries[key])


def _order(folder: Path) -> list[str]:
    """Keys in painting order for a run without repaints: shard by shard, in input order."""
    return [s["__key__"] for shard in list_shards(folder) for s in read_shard(shard, decode=False)]


def test_filter_cli_flags_and_errors(render_dir, tmp_path, capsys) -> None:
    THRESHOLD["mean"] = -1.0
    args = ("synthesize", "--in", render_dir, "--steps", "1", "--size", SIZE, "--quiet")
    code, err = hoigen(*args, "--out", tmp_path / "ok", "--min-pck", "0.6", "--max-tries", "2", "--pck-at", "0.1",
                       "--filter-detector", FAKE, capsys=capsys)
    assert code == 0, err
    run = json.loads((tmp_path / "ok" / "run.json").read_text())
    assert run["config"]["min_pck"] == 0.6 and run["image_filter"]["pck_at"] == 0.1
    for extra, code_wanted, text in (
        (("--pck-at", "0.3", "--min-pck", "0.5"), 2, "--pck-at must be one of 0.05, 0.1, 0.2"),
        (("--min-pck", "1.5"), 2, "--min-pck must be in 0..1"),
        (("--min-pck", "0.5", "--video"), 2, "--min-pck filters still images"),
        (("--min-pck", "0.5", "--filter-detector", "nocolon"), 1, "--filter-detector 'nocolon': write mediapipe"),
        (("--min-pck", "0.5", "--filter-detector", "no_such_module_x:f"), 1, "cannot import no_such_module_x"),
    ):
        code, err = hoigen(*args, "--out", tmp_path / "bad", *extra, capsys=capsys)
        assert code == code_wanted and text in err and "Traceback" not in err, (extra, err)
        assert len(err.strip().splitlines()) == 1, err


def test_merged_ranks_sum_the_filter_counts(render_dir, tmp_path) -> None:
    from hoigen.data.merge import merge

    THRESHOLD["mean"] = 256.0  # every judged sample dropped: the counts differ per shard
    one = _run(render_dir, tmp_path / "one", min_pck=0.0, max_tries=2, filter_detector=FAKE)["image_filter"]
    ranks = [tmp_path / f"rank{r}" for r in range(2)]
    for r, folder in enumerate(ranks):
        hg.synthesize(render_dir, folder, steps=1, size=SIZE, batch_size=2, quiet=True, min_pck=0.0, max_tries=2,
                      filter_detector=FAKE, shard_index=r, num_shards=2)  # fmt: skip
    merge(tmp_path / "merged", ranks, quiet=True)
    merged = json.loads((tmp_path / "merged" / "run.json").read_text())["image_filter"]
    assert merged == one and (merged["samples"], merged["kept"], merged["dropped"]) == (6, 1, 5)
