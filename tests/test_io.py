"""Lazy samples (issue 22): a stage decodes only the members it reads and passes the rest through as
their original bytes; the output is byte-identical to decoding and re-encoding every member."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from hoigen.data import codec
from hoigen.data.shards import EAGER_ENV, LazySample, list_shards, read_shard, write_shard
from hoigen.errors import HoigenError

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def every_field() -> dict:
    rng = np.random.default_rng(0)
    return {
        "__key__": "mug-000_0000_000_00",
        "ann.json": {"key": "mug-000_0000_000_00", "x": [1.5, -2.25e-7], "nested": {"b": True}},
        "seg.png": rng.integers(0, 3, (16, 24), dtype=np.uint8),
        "depth.png": rng.integers(0, 60000, (16, 24), dtype=np.uint16),
        "normal.png": rng.integers(0, 256, (16, 24, 3), dtype=np.uint8),
        "image.jpg": rng.integers(0, 256, (16, 24, 3), dtype=np.uint8),
        "prompt.txt": "a hand holding a mug ☕",
        "extra.npy": np.arange(6, dtype=np.float32).reshape(2, 3),
        "blob.bin": b"\x00\x01raw",
    }


@pytest.fixture
def shard(tmp_path: Path) -> Path:
    path = tmp_path / "in" / "shard-000000.tar"
    path.parent.mkdir()
    second = {**every_field(), "__key__": "mug-000_0000_001_00"}
    write_shard(path, [every_field(), second])
    return path


def test_members_decode_on_first_access_only(shard: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real = codec.decode_field
    monkeypatch.setattr("hoigen.data.shards.decode_field", lambda n, d, w="": calls.append(n) or real(n, d, w))
    sample = next(read_shard(shard))
    assert isinstance(sample, LazySample) and calls == []
    assert "seg.png" in sample and len(sample) == 10 and calls == []  # `in`, len and keys decode nothing
    assert set(sample) == {"__key__", "__shard__", *[k for k in every_field() if k != "__key__"]}
    seg = sample["seg.png"]
    assert calls == ["seg.png"] and sample.decoded("seg.png") and not sample.decoded("depth.png")
    assert sample["seg.png"] is seg and calls == ["seg.png"]  # decoded once


def test_lazy_values_equal_eager_values(shard: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lazy = next(read_shard(shard))
    monkeypatch.setenv(EAGER_ENV, "1")
    eager = next(read_shard(shard))
    assert type(eager) is dict
    assert set(eager) == set(lazy)
    for name in eager:
        if isinstance(eager[name], np.ndarray):
            assert eager[name].dtype == lazy[name].dtype
            np.testing.assert_array_equal(eager[name], lazy[name])
        else:
            assert eager[name] == lazy[name], name
    np.testing.assert_array_equal(lazy["seg.png"], every_field()["seg.png"])  # lossless members round trip


def test_decoded_arrays_are_read_only(shard: Path) -> None:
    sample = next(read_shard(shard))
    with pytest.raises(ValueError, match="read-only"):
        sample["seg.png"][0, 0] = 7


def test_passing_through_gives_the_original_bytes(shard: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Unread, read-but-unchanged and re-encoded (eager) samples all write the input shard's bytes."""
    untouched = tmp_path / "a" / "shard-000000.tar"
    read = tmp_path / "b" / "shard-000000.tar"
    eager = tmp_path / "c" / "shard-000000.tar"
    for p in (untouched, read, eager):
        p.parent.mkdir()
    write_shard(untouched, read_shard(shard))

    def read_all(samples):
        for s in samples:
            [s[k] for k in s]
            yield s

    write_shard(read, read_all(read_shard(shard)))
    monkeypatch.setenv(EAGER_ENV, "1")
    write_shard(eager, read_shard(shard))
    monkeypatch.delenv(EAGER_ENV)
    original = shard.read_bytes()
    assert untouched.read_bytes() == original and read.read_bytes() == original
    # eager re-encodes every member: the same bytes except the JPEG, which a second encode changes (lossy)
    lazy_jpg = [s["image.jpg"] for s in read_shard(read, decode=False)]
    eager_jpg = [s["image.jpg"] for s in read_shard(eager, decode=False)]
    assert lazy_jpg != eager_jpg
    lazy_rest = [{k: v for k, v in s.items() if k != "image.jpg"} for s in read_shard(read, decode=False)]
    assert lazy_rest == [{k: v for k, v in s.items() if k != "image.jpg"} for s in read_shard(eager, decode=False)]


def test_changes_are_written(shard: Path, tmp_path: Path) -> None:
    """An assigned member is encoded; a decoded .json changed in place is re-encoded with the change."""
    out = tmp_path / "out" / "shard-000000.tar"
    out.parent.mkdir()

    def change(samples):
        for s in samples:
            s = s.copy()
            s.pop("__shard__")
            s["seg.png"] = np.full((16, 24), 2, np.uint8)
            s["ann.json"]["x"].append(3)
            del s["blob.bin"]
            s["gen.json"] = {"seed": 1}
            yield s

    write_shard(out, change(read_shard(shard)))
    back = list(read_shard(out))
    assert [b["ann.json"]["x"] for b in back] == [[1.5, -2.25e-7, 3]] * 2
    assert all((b["seg.png"] == 2).all() and b["gen.json"] == {"seed": 1} and "blob.bin" not in b for b in back)
    np.testing.assert_array_equal(back[0]["depth.png"], every_field()["depth.png"])


def test_copy_keeps_members_undecoded_and_apart(shard: Path) -> None:
    sample = next(read_shard(shard))
    twin = sample.copy()
    twin["prompt.txt"] = "changed"
    assert sample["prompt.txt"] == "a hand holding a mug ☕"
    assert not twin.decoded("depth.png") and twin.original("depth.png") == sample.original("depth.png")
    assert twin.original("prompt.txt") is None
    again = pickle.loads(pickle.dumps(sample))  # samples travel to worker processes
    np.testing.assert_array_equal(again["depth.png"], sample["depth.png"])


def corrupt(member: str, data: bytes) -> bytes:
    """The member's bytes damaged the way a bad disk would: a flipped bit the strict decoder notices."""
    if member.endswith(".png"):
        bad = bytearray(data)
        bad[-20] ^= 0x01  # inside the IDAT data: its CRC no longer matches
        return bytes(bad)
    if member.endswith(".jpg"):
        for pos in range(len(data) // 2, len(data) - 2):
            bad = bytearray(data)
            bad[pos] ^= 0x40
            try:
                codec.decode_field(member, bytes(bad))
            except HoigenError:
                return bytes(bad)
        raise AssertionError("no flip was noticed")
    return b"\xff" + data[1:]  # neither UTF-8 nor JSON


@pytest.mark.parametrize("member", ["depth.png", "image.jpg", "ann.json", "prompt.txt"])
def test_a_corrupt_member_passed_through_is_one_line(shard: Path, tmp_path: Path, member: str) -> None:
    """A member copied without decoding is checked first (PNG chunk CRCs; others decoded strictly)."""
    raw = [{k: v for k, v in s.items() if k != "__shard__"} for s in read_shard(shard, decode=False)]
    raw[1][member] = corrupt(member, raw[1][member])
    damaged = tmp_path / "damaged" / "shard-000000.tar"
    damaged.parent.mkdir()
    write_shard(damaged, raw)
    out = tmp_path / "out" / "shard-000000.tar"
    out.parent.mkdir()
    with pytest.raises(HoigenError) as err:
        write_shard(out, read_shard(damaged))
    text = str(err.value)
    assert text.startswith(f"{damaged}: member {member} is not valid") and "\n" not in text
    assert not out.exists() and not list(out.parent.iterdir())  # nothing published, no temporary file left


def test_eager_mode_reads_plain_dicts_and_decode_false_raw_bytes(shard: Path, monkeypatch) -> None:
    raw = next(read_shard(shard, decode=False))
    assert type(raw) is dict and raw["seg.png"][:8] == codec.PNG_SIGNATURE
    only = next(read_shard(shard, fields=("ann.json",)))
    assert set(only) == {"__key__", "__shard__", "ann.json"}
    monkeypatch.setenv(EAGER_ENV, "1")
    assert isinstance(next(read_shard(shard))["seg.png"], np.ndarray)


# --- the real stages on the tiny chain ------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """grasp -> render (one mug grasp, two frames, 64 px)."""
    from hoigen import api
    from hoigen.grasp.options import GraspOptions
    from hoigen.options import Common
    from hoigen.render.options import RenderOptions

    root = tmp_path_factory.mktemp("io")
    quiet = Common(quiet=True)
    api.grasp(None, root / "grasp", GraspOptions(categories=["mug"], grasps=1, frames=2), quiet)
    api.render(root / "grasp", root / "render", RenderOptions(views=1, size=64), quiet)
    return root


def folder_files(folder: Path) -> dict[str, bytes]:
    """A folder's shards and output files (not run.json / cards / start marks, which name the folder)."""
    skip = {"run.json", "README.md", ".run-start.json"}
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name not in skip and not p.name.startswith(".lock")
    }


def test_synthesize_and_export_give_the_same_bytes_lazy_or_eager(tiny: Path, monkeypatch) -> None:
    """Synthesize (which passes the render maps through) and export write byte-identical folders whether
    members are decoded on read and re-encoded (as before) or copied; synthesize decodes fewer members."""
    from hoigen import api
    from hoigen.diffusion.options import SynthOptions
    from hoigen.export.options import ExportOptions
    from hoigen.options import Common

    quiet = Common(quiet=True)
    real, decoded = codec.decode_field, []

    def counting(name: str, data: bytes, where: str = ""):
        decoded.append(name)
        return real(name, data, where)

    monkeypatch.setattr("hoigen.data.shards.decode_field", counting)
    synth = SynthOptions(steps=2, size=64)
    monkeypatch.setenv(EAGER_ENV, "1")
    api.synthesize(tiny / "render", tiny / "synth-eager", synth, quiet)
    eager_decoded = sorted(set(decoded))
    decoded.clear()
    monkeypatch.delenv(EAGER_ENV)
    api.synthesize(tiny / "render", tiny / "synth-lazy", synth, quiet)
    lazy_decoded = sorted(set(decoded))
    assert folder_files(tiny / "synth-lazy") == folder_files(tiny / "synth-eager")
    assert len(list_shards(tiny / "synth-lazy")) == 1
    assert {"nocs.png", "depth.png", "amodal.png", "shade.png"} <= set(eager_decoded)
    assert {"nocs.png", "depth.png", "amodal.png", "shade.png"}.isdisjoint(lazy_decoded)  # passed through
    assert "ann.json" in lazy_decoded and "seg.png" in lazy_decoded  # what synthesize reads

    for fmt in ("nocs", "bop", "coco"):
        decoded.clear()
        api.export(tiny / "synth-lazy", tiny / f"{fmt}-lazy", ExportOptions(format=fmt), quiet)
        assert {"normal.png", "skeleton.png", "shade.png"}.isdisjoint(decoded), fmt  # exports never read them
        monkeypatch.setenv(EAGER_ENV, "1")
        api.export(tiny / "synth-lazy", tiny / f"{fmt}-eager", ExportOptions(format=fmt), quiet)
        monkeypatch.delenv(EAGER_ENV)
        assert folder_files(tiny / f"{fmt}-lazy") == folder_files(tiny / f"{fmt}-eager"), fmt


def test_render_output_is_the_same_lazy_or_eager(tiny: Path, monkeypatch) -> None:
    from hoigen import api
    from hoigen.options import Common
    from hoigen.render.options import RenderOptions

    monkeypatch.setenv(EAGER_ENV, "1")
    api.render(tiny / "grasp", tiny / "render-eager", RenderOptions(views=1, size=64), Common(quiet=True))
    assert folder_files(tiny / "render-eager") == folder_files(tiny / "render")
