"""Keeping the device fed (issue 22): the prompt-embedding cache, noise and uint8 conversion on the device with
one transfer per batch, the prefetch and writer threads, and failures in those threads.

Everything runs the tiny stand-in on CPU at 32 px; there the new loop must write the same bytes as the old one.
"""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from synthetic import render_ann

import hoigen as hg
from hoigen.data.codec import decode_field
from hoigen.data.shards import ShardWriter, list_shards, read_shard
from hoigen.diffusion import stage
from hoigen.diffusion.conditions import CONDITIONING_CHANNELS
from hoigen.diffusion.pipeline import PromptEmbeddings, generate, prompt_embeddings
from hoigen.diffusion.stage import Feed
from hoigen.diffusion.tiny import build_tiny_pipeline
from hoigen.errors import HoigenError

SIZE = 32
STEPS = 2

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def pipe():
    return build_tiny_pipeline(0)


def _conds(batch: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, CONDITIONING_CHANNELS, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


# --- the pipeline call ----------------------------------------------------------------------------------


def test_prompt_cache_gives_the_pipelines_own_embeddings_and_stays_bounded(pipe):
    prompts = ["a hand holding a mug", "a photo of a bottle", "a hand holding a mug"]
    with torch.inference_mode():
        want, want_negative = pipe.encode_prompt(prompts, "cpu", 1, True, negative_prompt=["blurry"] * 3)
        _, want_empty = pipe.encode_prompt(prompts, "cpu", 1, True, negative_prompt=None)
    cache = PromptEmbeddings(pipe, size=2)
    got, negative = cache.batch(prompts, "blurry")
    assert torch.equal(got, want) and torch.equal(negative, want_negative)
    assert cache.encoded == 3  # two distinct prompts and the negative, each once
    assert cache.get("blurry") is cache.get("blurry") and cache.encoded == 3
    # two entries: "a photo ..." was dropped for the negative, and is encoded again now
    assert torch.equal(cache.batch(prompts, None)[1], want_empty)  # no negative = the empty text
    assert cache.encoded == 5 and list(cache._cache) == ["a hand holding a mug", ""]
    assert torch.equal(cache.get("a hand holding a mug"), want[:1]) and cache.encoded == 5
    assert prompt_embeddings(pipe) is prompt_embeddings(pipe)  # one cache per pipeline


@pytest.mark.parametrize("guidance, negative", [(7.5, "blurry"), (7.5, None), (1.0, None)])
def test_generate_with_the_cache_equals_without(pipe, guidance, negative):
    prompts, seeds = ["a hand holding a mug", "a photo of a bottle", "a hand holding a mug"], [3, 4, 5]
    plain = generate(pipe, _conds(3), prompts, seeds, steps=STEPS, guidance=guidance, negative_prompt=negative)
    cached = generate(pipe, _conds(3), prompts, seeds, steps=STEPS, guidance=guidance, negative_prompt=negative,
                      prompt_cache=PromptEmbeddings(pipe))  # fmt: skip
    assert all(a.shape == (SIZE, SIZE, 3) and a.dtype == np.uint8 for a in cached)
    assert all(a.tobytes() == b.tobytes() for a, b in zip(plain, cached, strict=True))


def test_an_image_does_not_depend_on_its_batch_companions(pipe):
    """Per-sample generators: at one batch size, the same seed, prompt and condition give the same bytes
    wherever the sample sits and whatever shares its batch (batch 1 vs 4 may differ by float rounding of
    batched convolutions: ``test_diffusion.test_generate_is_independent_of_batching``)."""
    conds, cache = _conds(6), PromptEmbeddings(pipe)
    a = generate(pipe, conds[[0, 1, 2, 3]], ["p0", "p1", "p2", "p3"], [0, 1, 2, 3], steps=STEPS, prompt_cache=cache)
    b = generate(pipe, conds[[4, 5, 0, 1]], ["p4", "p5", "p0", "p1"], [4, 5, 0, 1], steps=STEPS, prompt_cache=cache)
    assert a[0].tobytes() == b[2].tobytes() and a[1].tobytes() == b[3].tobytes()
    assert a[0].tobytes() != a[1].tobytes()


def test_generate_moves_images_to_the_host_once_per_batch(pipe, monkeypatch):
    """No host transfer or sync (``.cpu()``, ``.numpy()``, ``.item()``, ``bool``/``float`` of a tensor) in
    hoigen's code while the pipeline runs, except the one transfer of the finished uint8 batch.
    (The conditions' range check reads two numbers of CPU tensors before the call; device tensors are
    checked before they are copied.)"""
    names = ("cpu", "numpy", "item", "tolist", "__bool__", "__float__", "__int__")
    calls: list[tuple[str, str]] = []
    for name in names:
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _name=name, _original=original, **kwargs):
            frame = sys._getframe(1)
            if "/hoigen/" in frame.f_code.co_filename and frame.f_code.co_name != "check_conditions":
                calls.append((_name, frame.f_code.co_name))
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    generate(pipe, _conds(3), ["a", "b", "c"], [1, 2, 3], steps=3, prompt_cache=PromptEmbeddings(pipe))
    monkeypatch.undo()
    assert calls == [("cpu", "generate"), ("numpy", "generate")]


# --- the stage loop -----------------------------------------------------------------------------------------




@pytest.fixture(scope="module")
def render_dir(tmp_path_factory) -> Path:
    """A render folder: two shards of five samples each (two views of a five-frame trajectory)."""
    folder = tmp_path_factory.mktemp("render")
    rng = np.random.default_rng(0)
    for view in (0, 1):
        with ShardWriter(folder / f"shard-{view:06d}.tar") as writer:
            for frame in range(5):
                key = f"mug-1_0000_{frame:03d}_{view:02d}"
                seg = np.zeros((SIZE, SIZE), np.uint8)
                seg[6 + frame : 18 + frame, 6:18] = 1
                seg[12:26, 14:28] = 2
                writer.write({
                    "__key__": key,
                    "normal.png": rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8) * (seg > 0)[..., None],
                    "seg.png": seg,
                    "skeleton.png": np.zeros((SIZE, SIZE, 3), np.uint8),
                    "ann.json": render_ann(key, frame, 5, SIZE),
                })  # fmt: skip
    (folder / "run.json").write_text(json.dumps({"stage": "render"}))
    (folder / "objects.parquet").write_bytes(b"")
    return folder


def _synthesize(render_dir: Path, out: Path, feed: Feed, monkeypatch, **options) -> list[bytes]:
    monkeypatch.setattr(stage, "FEED", feed)
    given = {"steps": 1, "size": SIZE, "batch_size": 4, "negative_prompt": "blurry", "quiet": True}
    hg.synthesize(render_dir, out, **{**given, **options})
    return [p.read_bytes() for p in list_shards(out)]


def _no_helper_threads() -> bool:
    return not [t for t in threading.enumerate() if t.name.startswith("hoigen-") and t.is_alive()]


@pytest.mark.parametrize("batch_size", [1, 4])
def test_new_loop_writes_the_old_loops_bytes(render_dir, tmp_path, monkeypatch, batch_size):
    """Prefetch thread, writer thread and prompt cache on or off: byte-identical shards (same process)."""
    extra = {"batch_size": batch_size, "images_per_condition": 2, "save_conditions": True}
    new = _synthesize(render_dir, tmp_path / "new", Feed(), monkeypatch, **extra)
    old = _synthesize(render_dir, tmp_path / "old", Feed.inline(), monkeypatch, **extra)
    inline_writer = _synthesize(render_dir, tmp_path / "w", Feed(writer=False, ahead=3), monkeypatch, **extra)
    assert len(new) == 2 and new == old == inline_writer
    assert _no_helper_threads()


def test_batch_1_and_4_paint_the_same_samples(render_dir, tmp_path, monkeypatch):
    """Prompts, seeds and records are exactly those of a one-image batch; pixels differ at most by the float
    rounding of batched convolutions (JPEG may spread a one-level difference a little)."""
    one = _synthesize(render_dir, tmp_path / "one", Feed(), monkeypatch, batch_size=1)
    four = _synthesize(render_dir, tmp_path / "four", Feed(), monkeypatch, batch_size=4)
    for a_shard, b_shard in zip(list_shards(tmp_path / "one"), list_shards(tmp_path / "four"), strict=True):
        for a, b in zip(read_shard(a_shard), read_shard(b_shard), strict=True):
            assert a["__key__"] == b["__key__"] and a["prompt.txt"] == b["prompt.txt"]
            assert a["gen.json"] == b["gen.json"]
            assert np.abs(a["image.jpg"].astype(int) - b["image.jpg"]).mean() < 0.5
    assert len(one) == len(four) == 2


def test_a_writer_thread_failure_is_one_clear_error_and_publishes_nothing(render_dir, tmp_path, monkeypatch):
    calls = {"n": 0}
    real = stage._encoded

    def failing(samples):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError("disk full (simulated)")
        return real(samples)

    monkeypatch.setattr(stage, "_encoded", failing)
    out = tmp_path / "out"
    with pytest.raises(HoigenError, match=r"writer thread failed at mug-1_0000_00\d_00 \(OSError: disk full"):
        _synthesize(render_dir, out, Feed(), monkeypatch, batch_size=2)
    assert list_shards(out) == [] and not [p for p in out.rglob("*") if ".tmp-" in p.name]
    assert _no_helper_threads()
    # the next run finishes the folder
    monkeypatch.setattr(stage, "_encoded", real)
    assert len(_synthesize(render_dir, out, Feed(), monkeypatch, batch_size=2)) == 2


def test_a_video_file_failure_in_the_writer_thread_is_one_clear_error(render_dir, tmp_path, monkeypatch):
    import hoigen.diffusion.video as video

    def broken(path, frames, fps=8):
        raise RuntimeError("no codec (simulated)")

    monkeypatch.setattr(video, "write_mp4", broken)
    out = tmp_path / "out"
    with pytest.raises(HoigenError, match=r"writer thread failed at mug-1_0000_00\.mp4 \(RuntimeError: no codec"):
        _synthesize(render_dir, out, Feed(), monkeypatch, video=True)
    assert list_shards(out) == []
    assert _no_helper_threads()


def test_a_prefetch_failure_surfaces_unchanged(render_dir, tmp_path, monkeypatch):
    """An error while building conditions (in the prefetch thread) reaches the caller as itself."""

    def broken(samples, opts):
        raise HoigenError("condition maps unreadable (simulated)")

    monkeypatch.setattr(stage, "job_conditions", broken)
    out = tmp_path / "out"
    with pytest.raises(HoigenError, match="condition maps unreadable"):
        _synthesize(render_dir, out, Feed(), monkeypatch)
    assert list_shards(out) == []
    assert _no_helper_threads()


def test_writer_thread_hands_on_encoded_members(render_dir, tmp_path, monkeypatch):
    """With the writer thread, the stage yields image members as their JPEG bytes (what the shard holds)."""
    from hoigen.data.runner import StageContext
    from hoigen.diffusion.options import SynthOptions

    monkeypatch.setattr(stage, "FEED", Feed())
    samples = list(read_shard(render_dir / "shard-000000.tar"))
    options = SynthOptions(steps=1, size=SIZE, batch_size=2).resolved()
    ctx = StageContext(stage="synthesize", seed=0, options=options, out_dir=tmp_path,
                       inputs=stage.SynthInputs(("a hand holding a {object}, {background}",)))  # fmt: skip
    out = list(stage.synth_stage(iter(samples), ctx))
    assert [s["__key__"] for s in out] == [s["__key__"] for s in samples]
    image = out[0]["image.jpg"]
    assert isinstance(image, bytes) and decode_field("image.jpg", image).shape == (SIZE, SIZE, 3)
    assert isinstance(out[0]["gen.json"], dict) and isinstance(out[0]["prompt.txt"], str)


def test_filter_repaints_are_the_same_with_the_prefetch_thread(render_dir, tmp_path, monkeypatch):
    """--min-pck jobs depend on earlier verdicts: composed in the stage's thread, built in the prefetch thread;
    the repaints, drops and bytes equal the old loop's."""
    import test_synth_filter as fake

    monkeypatch.setattr(fake, "THRESHOLD", {"mean": 0.0})
    monkeypatch.setattr(fake, "SEEN", [])
    probe = _synthesize(render_dir, tmp_path / "probe", Feed.inline(), monkeypatch, min_pck=0.5,
                        filter_detector=fake.FAKE, batch_size=3)  # fmt: skip
    assert probe and fake.SEEN
    fake.THRESHOLD["mean"] = float(np.median(fake.SEEN))  # about half the first paintings fail
    runs = {}
    for name, feed in (("new", Feed()), ("old", Feed.inline())):
        out = tmp_path / name
        runs[name] = _synthesize(render_dir, out, feed, monkeypatch, min_pck=0.5, filter_detector=fake.FAKE,
                                 max_tries=2, batch_size=3)  # fmt: skip
        runs[name + "-stats"] = [p.read_bytes() for p in sorted((out / stage.FILTER_DIR).iterdir())]
    assert runs["new"] == runs["old"] and runs["new-stats"] == runs["old-stats"]
    stats = [json.loads(b)["objects"]["mug-1"] for b in runs["new-stats"]]
    assert sum(s["paintings"] for s in stats) > sum(s["samples"] for s in stats)  # some were repainted


def test_adapter_pipeline_decoded_on_the_device_equals_its_own_numpy_output(pipe):
    """The T2I-Adapter pipeline has no tensor output: hoigen decodes its latents itself, with its arithmetic."""
    from diffusers import StableDiffusionAdapterPipeline, T2IAdapter

    base = {k: v for k, v in pipe.components.items() if k not in ("controlnet", "image_encoder")}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        adapter = T2IAdapter(in_channels=3, channels=list(pipe.unet.config.block_out_channels), num_res_blocks=1,
                             downscale_factor=8, adapter_type="full_adapter")  # fmt: skip
    adapted = StableDiffusionAdapterPipeline(**base, adapter=adapter, requires_safety_checker=False)
    adapted.set_progress_bar_config(disable=True)
    maps = torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    ours = generate(adapted, [maps], ["a", "b"], [1, 2], steps=STEPS, negative_prompt="x",
                    prompt_cache=PromptEmbeddings(adapted))  # fmt: skip
    with torch.inference_mode():
        theirs = adapted(prompt=["a", "b"], image=maps, num_inference_steps=STEPS, negative_prompt=["x", "x"],
                         generator=[torch.Generator().manual_seed(s) for s in (1, 2)], output_type="np",
                         adapter_conditioning_scale=1.0).images  # fmt: skip
    want = (np.clip(theirs.astype(np.float32), 0, 1) * 255.0).round().astype(np.uint8)
    assert all(a.tobytes() == b.tobytes() for a, b in zip(ours, want, strict=True))


def test_video_new_loop_writes_the_old_loops_bytes(render_dir, tmp_path, monkeypatch):
    """Clips and frames written by the writer thread equal those written inline, as do the shards."""
    new = _synthesize(render_dir, tmp_path / "new", Feed(), monkeypatch, video=True)
    old = _synthesize(render_dir, tmp_path / "old", Feed.inline(), monkeypatch, video=True)
    assert len(new) == 2 and new == old

    def files(root: Path) -> dict[str, bytes]:
        return {str(p.relative_to(root)): p.read_bytes() for p in sorted((root / "videos").rglob("*")) if p.is_file()}

    made = files(tmp_path / "new")
    assert "videos/mug-1_0000_00.mp4" in made and "videos/mug-1_0000_01/004.jpg" in made
    assert made == files(tmp_path / "old")
