"""The synthesize stage: render samples in, the same samples plus painted images out.

Still images: samples are painted ``batch_size`` images at a time. Each image gets its own prompt
(a template chosen and filled from the sample key's seed) and its own diffusion seed derived from
the run seed and its key (and its number, for ``images_per_condition`` > 1), so an image does not
depend on batching, workers or ranks. Image 0 is ``image.jpg`` / ``prompt.txt``; image j > 0 is
``image_{j}.jpg`` / ``prompt_{j}.txt`` in the same sample; ``gen.json`` lists them all.

Videos (``video``): the samples of a shard are grouped into trajectories seen by a fixed camera
(same object, grasp and view; ``hoigen.diffusion.video``). All frames of a trajectory are painted
in one batch with cross-frame attention to the anchor frame, one shared prompt and one shared seed
(derived from the run seed and the trajectory), and are written to the shard as usual plus, beside
the shards, ``videos/<object>_<grasp>_<view>.mp4`` and ``videos/<object>_<grasp>_<view>/<frame>.jpg``
(``_<j>`` appended for image j > 0).

Keeping the device fed (:class:`Feed`): a prefetch thread reads the input and builds the conditions of
the next jobs (two ahead; copied to the device there), the diffusion thread paints one job after another
(prompt embeddings cached per pipeline, noise drawn on the device, one device-to-host transfer per
batch), and a writer thread JPEG-encodes finished samples while the stage's own thread hands them to
the shard writer (tar). Each thread hands on through a bounded queue, and the order of the output
never depends on timing. A failure in any of them ends the run with one line naming it; the shard
is then not published.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import sys
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache, partial
from pathlib import Path
from typing import Any, NamedTuple

import cv2
import numpy as np
import torch

from hoigen.data.contract import read_run_json
from hoigen.data.runner import Plan, Stage, StageContext, input_tasks
from hoigen.data.schema import Sample, derive_seed
from hoigen.diffusion.options import SynthOptions
from hoigen.options import Common, record

BACKGROUNDS = (
    "on a wooden kitchen table",
    "in a bright living room",
    "on an office desk",
    "in front of a white wall",
    "outdoors in a garden",
    "on a marble countertop",
)
VIDEO_DIR = "videos"
FILTER_DIR = "filter_stats"  # per-shard counts of the --min-pck filter, summed into run.json by finalize


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


@lru_cache(maxsize=1)
def _pipeline(
    spec: Any,
    device: str,
    dtype: str | None = None,
    compile: bool = False,  # noqa: A002
    tiled_vae: bool = False,
) -> tuple[Any, dict]:
    """The loaded, tuned pipeline (cached per process: a stage's shards share it)."""
    from hoigen.diffusion.pipeline import load_synthesis_pipeline, tune_pipeline

    pipe, info = load_synthesis_pipeline(spec, device=device, dtype=dtype)
    info = {**info, "speed": tune_pipeline(pipe, compile=compile, tiled_vae=tiled_vae)}
    if info.get("kind") == "unconditioned" and multiprocessing.parent_process() is None:
        sys.stderr.write(
            "warning: --controlnet none: plain text-to-image; the images will not match the hand/object labels\n"
        )
    return pipe, info


def model_spec(opts: SynthOptions) -> Any:
    """The ``ModelSpec`` (base, ControlNets or adapters, LoRAs) the synthesize options ask for."""
    from hoigen.diffusion.controls import parse_controls, parse_loras
    from hoigen.diffusion.pipeline import ModelSpec

    controlnets, adapters = parse_controls(opts.controlnet, opts.adapter)
    return ModelSpec(
        model=opts.model,
        controlnets=tuple(controlnets),
        adapters=tuple(adapters),
        loras=tuple(parse_loras(opts.lora)),
        model_config=opts.model_config,
        img2img=opts.init == "shade",
    )


def control_scales(opts: SynthOptions) -> list[float]:
    """One output weight per ControlNet / adapter, in the models' order."""
    from hoigen.diffusion.controls import parse_scales

    spec = model_spec(opts)
    if spec.adapters:
        return parse_scales("--adapter-scale", opts.adapter_scale, spec.kinds)
    return parse_scales("--control-scale", opts.control_scale, spec.kinds)


def pipeline_for(opts: SynthOptions) -> tuple[Any, dict]:
    """The pipeline the synthesize options ask for, with its scheduler set."""
    from hoigen.diffusion.schedulers import set_scheduler

    pipe, info = _pipeline(
        model_spec(opts), resolve_device(opts.device), opts.dtype, opts.compile, opts.tiled_vae
    )
    set_scheduler(pipe, opts.scheduler)
    return pipe, info


@dataclass(frozen=True)
class SynthInputs:
    """What the synthesize stage resolved besides its options."""

    prompt_templates: tuple[str, ...]


class SynthStage(Stage):
    """Render shards -> synthesize shards (image.jpg, prompt.txt, gen.json added)."""

    name = "synthesize"
    sidecars = (FILTER_DIR,)  # the image filter's counts per shard

    def __init__(self, in_dir: Path, options: SynthOptions) -> None:
        self.in_dir, self.options = Path(in_dir), options.resolved()

    @property
    def transform(self) -> Any:
        return synth_stage

    def plan(self, out_dir: Path, common: Common) -> Plan:
        from hoigen.data.contract import OBJECTS_KEY, objects_dir_of
        from hoigen.diffusion.prompts import DEFAULT_PROMPTS, load_prompts

        opts = self.options
        tasks = input_tasks(self.in_dir, ("render",))
        templates = load_prompts(opts.prompts) if opts.prompts is not None else list(DEFAULT_PROMPTS)
        _, model_info = pipeline_for(opts)  # fail early on missing weights
        if opts.min_pck is not None:
            _detector(opts.filter_detector)  # and on a missing detector (one line naming what to install)
        extra = {OBJECTS_KEY: str(objects_dir_of(self.in_dir)), "diffusion_model": model_info}
        config = {**record(opts), "prompt_templates": templates}
        return Plan(tasks, opts, config, in_dir=self.in_dir, extra=extra, inputs=SynthInputs(tuple(templates)))

    @classmethod
    def tally(cls, out_dir: Path, quiet: bool = False) -> None:
        if read_run_json(out_dir).get("config", {}).get("min_pck") is not None:  # the run used --min-pck
            record_filter(out_dir, quiet)


def job_conditions(samples: list[Sample], opts: SynthOptions) -> list[torch.Tensor]:
    """The condition tensors of a batch, one per model, each in its model's convention."""
    from hoigen.diffusion.controls import condition_tensors

    spec = model_spec(opts)
    return condition_tensors(samples, spec.kinds, spec.family, int(opts.size))


def sample_prompt(templates: Sequence[str], sample: Sample, rng) -> str:
    """A prompt for a sample: a drawn template filled with its object's words and a drawn background."""
    from hoigen.diffusion.prompts import fill_prompt, object_words

    obj = sample["ann.json"]["object"]
    words = object_words(obj["category"], obj.get("id") or sample["__key__"].split("_")[0])
    template = templates[int(rng.integers(len(templates)))]
    return fill_prompt(template, background=BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))], **words)


def image_fields(j: int) -> tuple[str, str]:
    """Member names of image j of a sample: image.jpg / prompt.txt, then image_1.jpg / prompt_1.txt, ..."""
    return ("image.jpg", "prompt.txt") if j == 0 else (f"image_{j}.jpg", f"prompt_{j}.txt")


@dataclass(frozen=True)
class Feed:
    """How the synthesis loop keeps the diffusion model busy (internal, not an option: every setting gives
    the same bytes; tests and benches compare them).

    ``ahead``: jobs in flight besides the one being finished (read, conditions built, queued to paint);
    ``prefetch_thread``: reading and condition building run in a prefetch thread (else in the stage's
    thread); ``writer``: finished samples are JPEG-encoded in a writer thread (else by the shard writer,
    inline); ``cache_prompts``: text embeddings come from the pipeline's prompt cache.
    With ``--min-pck`` one job is in flight ahead (the repaints a result queues go into the job after next,
    as before), so the filter's batches stay what they were.
    """

    ahead: int = 2
    prefetch_thread: bool = True
    writer: bool = True
    cache_prompts: bool = True

    @classmethod
    def inline(cls) -> Feed:
        """The loop before issue 22: one job ahead, built and encoded in the stage's thread, prompts per batch."""
        return cls(ahead=1, prefetch_thread=False, writer=False, cache_prompts=False)


FEED = Feed()  # the stage's setting; tests and benches swap it


@dataclass
class _Job:
    """One diffusion call: ``items`` are (sample index, image number); ``anchor`` set for a video."""

    items: list[tuple[int, int]]
    prompts: list[str]
    seeds: list[int]
    anchor: int | None = None
    video: str | None = None
    init: torch.Tensor | None = None  # shade images for --init shade
    tries: list[int] = field(default_factory=list)  # each item's try (--min-pck repaints); empty: all first tries
    samples: list[Sample] = field(default_factory=list)  # each item's sample (still images)


class _Painted(NamedTuple):
    """One finished image: the picture, its prompt and seed, and under --min-pck its try and check."""

    image: np.ndarray
    prompt: str
    seed: int
    attempt: int = 0
    check: dict[str, Any] | None = None


def synth_stage(samples: Iterable[Sample], ctx: StageContext) -> Iterator[Sample]:
    """Add ``image.jpg``, ``prompt.txt`` and ``gen.json`` (and ``image_{j}.jpg`` ...) to every render sample.

    With ``min_pck`` each painted image is checked against its labels (:func:`hoigen.imgeval.verdict`); a
    failed image is queued again with its next try's seed (ahead of new samples, so samples finish in
    order), and a sample with an image that failed every try is dropped. The batches, and so the bytes,
    depend only on the input and the options."""
    opts: SynthOptions = ctx.options
    if opts.video:
        yield from _video_stage(list(samples), ctx)
        return
    per = opts.images_per_condition
    source = iter(samples)
    fresh: deque[tuple[int, int, int, Sample]] = deque()  # (sample index, image number, try, sample) to paint
    retry: deque[tuple[int, int, int, Sample]] = deque()
    results: dict[int, dict[int, _Painted]] = {}
    pending: dict[int, Sample] = {}  # samples with a painted image whose images are not all final yet
    read = 0  # samples taken from the input
    base = 0  # index of the next sample to finish
    counts = FilterCounts() if opts.min_pck is not None else None

    def compose() -> _Job | None:
        nonlocal read
        items: list[tuple[int, int, int, Sample]] = []
        while len(items) < opts.batch_size:
            if retry or fresh:
                items.append((retry or fresh).popleft())
                continue
            sample = next(source, None)
            if sample is None:
                break
            fresh.extend((read, j, 0, sample) for j in range(per))
            read += 1
        return _still_job(items, ctx) if items else None

    def build(job: _Job) -> list[torch.Tensor]:
        job.init = _init_images(job.samples, opts)
        return job_conditions(job.samples, opts)

    def make() -> tuple[_Job, list[torch.Tensor]] | None:
        job = compose()
        return None if job is None else (job, build(job))

    # Unfiltered jobs depend on the input alone, so they are made ahead in the prefetch thread; the
    # filter's depend on earlier verdicts, so they are composed here and only their conditions built there.
    jobs = _overlapped(compose, ctx, build) if counts is not None else _overlapped(make, ctx)
    saved: dict[int, dict[str, np.ndarray]] = {}
    writer = _Writer(FEED.writer)
    try:
        for job, conds, images in jobs:
            tries = job.tries or [0] * len(job.items)
            for n, ((index, j), sample, attempt, image, prompt, seed) in enumerate(
                zip(job.items, job.samples, tries, images, job.prompts, job.seeds, strict=True)
            ):
                pending[index] = sample
                check = None
                if counts is not None:
                    check = check_image(image, sample, opts)
                    if check["verdict"] == "fail" and attempt + 1 < opts.max_tries:
                        retry.append((index, j, attempt + 1, sample))
                        continue
                results.setdefault(index, {})[j] = _Painted(image, prompt, seed, attempt, check)
                if j == 0 and opts.save_conditions:
                    saved[index] = _saved_maps(conds, opts, n)
            done: list[Sample] = []
            while base in pending and len(results.get(base, {})) == per:
                sample, painted, members = pending.pop(base), results.pop(base), saved.pop(base, None)
                base += 1
                if counts is not None and not counts.add(sample, painted):
                    continue  # dropped: an image never agreed with the labels
                done.append(_finish(sample, painted, ctx, members=members))
            yield from writer.put(done)
        yield from writer.drain()
    finally:
        jobs.close()
        writer.close()
    if counts is not None:
        counts.write(Path(ctx.out_dir), ctx.shard)


class _Writer:
    """Encodes finished samples' images (``encode_field``: the shard writer's own encoding, so the same
    bytes) in a writer thread, at most two batches behind; with ``threaded`` off it passes them on as they
    are. Other file writes (a video's frames and clip) can be queued with :meth:`submit`. A failure in the
    thread surfaces here as one line; nothing of the failed batch is handed on."""

    def __init__(self, threaded: bool) -> None:
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hoigen-writer") if threaded else None
        self.batches: deque[tuple[str, Future]] = deque()
        self.files: list[tuple[str, Future]] = []

    def put(self, samples: list[Sample]) -> Iterator[Sample]:
        """Queue a batch; yields the samples of batches now done (oldest first) once two are queued."""
        if self.pool is None:
            yield from samples
            return
        if samples:
            self.batches.append((samples[0]["__key__"], self.pool.submit(_encoded, samples)))
        while len(self.batches) > 1:
            yield from self._take(*self.batches.popleft())

    def submit(self, what: str, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` in the writer thread (inline without one); ``what`` names it in an error."""
        if self.pool is None:
            fn(*args)
        else:
            self.files.append((what, self.pool.submit(fn, *args)))

    def drain(self) -> Iterator[Sample]:
        """The samples of every queued batch; raises if a queued file write failed."""
        while self.batches:
            yield from self._take(*self.batches.popleft())
        for what, future in self.files:
            self._take(what, future)
        self.files.clear()

    @staticmethod
    def _take(what: str, future: Future) -> Any:
        from hoigen.errors import HoigenError

        try:
            return future.result()
        except (HoigenError, MemoryError):
            raise
        except Exception as exc:
            text = " ".join(str(exc).split())[:200] or type(exc).__name__
            raise HoigenError(
                f"synthesize: the writer thread failed at {what} ({type(exc).__name__}: {text}); "
                "the shard was not written, rerun to retry it"
            ) from None

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)


def _encoded(samples: list[Sample]) -> list[Sample]:
    """The samples with every image member (numpy array) encoded to its bytes; a lazy sample's members
    become the bytes the writer would store (unchanged members: their original bytes, never decoded)."""
    from hoigen.data.codec import encode_field
    from hoigen.data.shards import LazySample, member_bytes

    return [
        {k: member_bytes(s, k) if k.endswith((".png", ".jpg")) else s[k] for k in s}
        if isinstance(s, LazySample)
        else {k: encode_field(k, v) if isinstance(v, np.ndarray) and k[:2] != "__" else v for k, v in s.items()}
        for s in samples
    ]


# --- the --min-pck filter -------------------------------------------------------------------------


@lru_cache(maxsize=2)
def _detector(spec: str) -> Any:
    """The filter's detector (cached per process; MediaPipe is imported only here)."""
    from hoigen.imgeval.detectors import load_detector

    return load_detector(spec)


def _json_safe(value: Any) -> Any:
    """NaN -> None (shard JSON allows no NaN), recursively."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def check_image(image: np.ndarray, sample: Sample, opts: SynthOptions) -> dict[str, Any]:
    """The filter's look at one painted image: the agreement row and its verdict (pass, fail or unjudged)."""
    from hoigen.imgeval.agreement import agreement, verdict

    row = agreement(image, sample["ann.json"], _detector(opts.filter_detector))
    return {"verdict": verdict(row, float(opts.min_pck or 0.0), opts.pck_at), "agreement": _json_safe(row)}


@dataclass
class FilterCounts:
    """Per object: samples seen, kept, dropped, kept after a repaint, unjudged images, and paintings made."""

    objects: dict[str, dict[str, int]] = field(default_factory=dict)

    def add(self, sample: Sample, painted: dict[int, _Painted]) -> bool:
        """Count one finished sample; True when it is kept (no image failed every try)."""
        obj = str(sample["ann.json"].get("object", {}).get("id") or sample["__key__"].split("_")[0])
        row = self.objects.setdefault(obj, dict.fromkeys(COUNT_NAMES, 0))
        kept = all(p.check is None or p.check["verdict"] != "fail" for p in painted.values())
        row["samples"] += 1
        row["kept" if kept else "dropped"] += 1
        row["repainted"] += int(kept and any(p.attempt > 0 for p in painted.values()))
        row["unjudged"] += sum(p.check is not None and p.check["verdict"] == "unjudged" for p in painted.values())
        row["paintings"] += sum(p.attempt + 1 for p in painted.values())
        return kept

    def write(self, out_dir: Path, shard: int) -> None:
        """``OUT/filter_stats/shard-NNNNNN.json`` (written before the shard is published; see
        :mod:`hoigen.data.sidecar`)."""
        from hoigen.data.sidecar import write_shard_record

        write_shard_record(out_dir, FILTER_DIR, shard, {"objects": self.objects})


COUNT_NAMES = ("samples", "kept", "dropped", "repainted", "unjudged", "paintings")


def filter_summary(out_dir: Path) -> dict[str, Any]:
    """The filter counts of every shard in ``out_dir`` summed per object and in total."""
    from hoigen.data.sidecar import shard_records

    per_object: dict[str, dict[str, int]] = {}
    for rec in shard_records(out_dir, FILTER_DIR):
        for obj, row in rec["objects"].items():
            mine = per_object.setdefault(obj, dict.fromkeys(COUNT_NAMES, 0))
            for name in COUNT_NAMES:
                mine[name] += int(row.get(name, 0))
    totals = {name: sum(r[name] for r in per_object.values()) for name in COUNT_NAMES}
    return {**totals, "per_object": dict(sorted(per_object.items()))}


def record_filter(out_dir: Path, quiet: bool = False) -> dict[str, Any]:
    """Write the filter's settings (from the run's config) and every shard's kept/dropped counts per
    object into ``run.json``'s ``image_filter``; print one line (a warning when nothing was kept)."""
    from hoigen.data.progress import info
    from hoigen.data.sidecar import update_run
    from hoigen.imgeval.agreement import MIN_VISIBLE_JOINTS
    from hoigen.imgeval.detectors import detector_name

    config = read_run_json(out_dir)["config"]
    min_pck, pck_at, tries, detector = (config[k] for k in ("min_pck", "pck_at", "max_tries", "filter_detector"))
    stats = filter_summary(out_dir)
    update_run(out_dir, image_filter={
        "min_pck": min_pck,
        "pck_at": pck_at,
        "max_tries": tries,
        "detector": detector_name(_detector(detector), detector),
        "rule": f"kept when PCK@{pck_at:g} >= {min_pck:g} within {tries} tries; images whose "
        f"labelled hand has fewer than {MIN_VISIBLE_JOINTS} visible joints are not judged (kept)",
        **stats,
    })  # fmt: skip
    line = (
        f"synthesize filter: kept {stats['kept']} of {stats['samples']} samples, dropped {stats['dropped']}, "
        f"{stats['repainted']} kept after a repaint ({stats['paintings']} paintings)"
    )
    if stats["samples"] and not stats["kept"]:
        sys.stderr.write(f"warning: synthesize: no image agreed with its labels ({line}); the output holds no samples; "
                         "try more --max-tries, a lower --min-pck, or check the model\n")
    else:
        info(line, quiet)
    return stats


def _saved_maps(conds: list[torch.Tensor], opts: SynthOptions, n: int) -> dict[str, np.ndarray]:
    from hoigen.diffusion.controls import saved_maps

    return saved_maps(conds, model_spec(opts).kinds, n)


def _init_images(samples: list[Sample], opts: SynthOptions) -> torch.Tensor | None:
    from hoigen.diffusion.controls import init_tensor

    return init_tensor(samples, int(opts.size)) if opts.init == "shade" else None


def image_seed(seed: int, key: str, j: int = 0, attempt: int = 0) -> int:
    """The diffusion seed of image ``j`` of sample ``key``, try ``attempt`` (image 0 keeps the seeds of
    single-image runs, try 0 those of unfiltered runs; a repaint adds ``"try", attempt``)."""
    names: tuple[Any, ...] = (key,) if j == 0 else (key, j)
    if attempt:
        names = (*names, "try", attempt)
    return derive_seed(seed, "synthesize", *names)


def _still_job(items: list[tuple[int, int, int, Sample]], ctx: StageContext) -> _Job:
    """The job painting ``items`` (sample index, image number, try, sample): prompts and seeds, no conditions."""
    prompts, seeds = [], []
    for _, j, attempt, s in items:
        key = s["__key__"]
        names = (key,) if j == 0 else (key, j)  # a repaint keeps its prompt: only the seed changes
        prompts.append(sample_prompt(ctx.inputs.prompt_templates, s, ctx.rng(*names)))
        seeds.append(image_seed(ctx.seed, key, j, attempt))
    return _Job([(i, j) for i, j, _, _ in items], prompts, seeds, tries=[t for _, _, t, _ in items],
                samples=[s for _, _, _, s in items])  # fmt: skip


def _overlapped(
    make: Callable[[], Any], ctx: StageContext, build: Callable[[_Job], list[torch.Tensor]] | None = None
) -> Iterator[tuple[_Job, list[torch.Tensor], list]]:
    """Paint jobs in the diffusion thread while the next ones are prepared (:class:`Feed`); yields
    (job, conditions, images) in the order the jobs were made.

    Without ``build``, ``make()`` returns (job, conditions) or None when the input is done; it must not
    depend on the results (it runs in the prefetch thread, ``FEED.ahead`` jobs ahead). With ``build``,
    ``make()`` returns a job or None when it has none *now* and runs in this thread between results (the
    consumer may queue more work, the filter's repaints, while handling one), ``build(job)`` makes its
    conditions in the prefetch thread, and one job is in flight ahead; the run ends when ``make`` has
    nothing and no job is in flight."""
    from hoigen.diffusion.pipeline import check_conditions, pipeline_device, prompt_embeddings
    from hoigen.diffusion.prompts import TruncationWarner

    opts: SynthOptions = ctx.options
    feed = FEED
    pipe, _ = pipeline_for(opts)
    warner = TruncationWarner(pipe.tokenizer, list(ctx.inputs.prompt_templates), opts.prompts)
    scales = control_scales(opts)
    cache = prompt_embeddings(pipe) if feed.cache_prompts else None
    device = pipeline_device(pipe)
    prefetch = (
        ThreadPoolExecutor(max_workers=1, thread_name_prefix="hoigen-prefetch") if feed.prefetch_thread else None
    )
    painter = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hoigen-diffusion")
    threads = torch.get_num_threads()
    ahead = 1 if build is not None else max(1, int(feed.ahead))

    def ready(got: tuple[_Job, list[torch.Tensor]] | None) -> tuple | None:
        """A made job with its conditions checked and (on a GPU) copied to the device."""
        if got is None:
            return None
        job, conds = got
        check_conditions(conds)
        return job, conds, [_to_device(t, device) for t in conds]

    def prefetched(fn: Callable[..., Any], *args: Any) -> tuple | None:
        torch.set_num_threads(threads)  # a new thread starts with the default count
        return ready(fn(*args))

    def prepare(fn: Callable[..., Any], *args: Any) -> Future:
        if prefetch is not None:
            return prefetch.submit(prefetched, fn, *args)
        future: Future = Future()
        try:
            future.set_result(ready(fn(*args)))
        except BaseException as exc:  # handed on like a thread's failure
            future.set_exception(exc)
        return future

    def paint(prepared: Future) -> list[np.ndarray] | None:
        from hoigen.diffusion.conditions import parse_condition_scales
        from hoigen.diffusion.pipeline import generate

        got = prepared.result()
        if got is None:
            return None
        job, _, conds = got
        torch.set_num_threads(threads)  # a new thread starts with the default count
        warner.check(job.prompts)
        return generate(
            pipe,
            conds,
            job.prompts,
            job.seeds,
            steps=opts.steps,
            guidance=opts.guidance,
            negative_prompt=opts.negative_prompt,
            control_scale=scales,
            condition_scales=parse_condition_scales(opts.condition_scales),
            video_anchor=job.anchor,
            blank_uncond=opts.blank_uncond,
            init_images=job.init,
            strength=opts.strength,
            control_start=opts.control_start,
            control_end=opts.control_end,
            height=int(opts.size),
            width=int(opts.size),
            prompt_cache=cache,
        )

    inflight: deque[tuple[Future, Future]] = deque()
    exhausted = False
    try:
        while True:
            while not exhausted and len(inflight) <= ahead:
                if build is None:
                    prepared = prepare(make)
                    if prepared.done() and prepared.exception() is None and prepared.result() is None:
                        exhausted = True
                        break
                else:
                    job = make()
                    if job is None:
                        break
                    prepared = prepare(lambda j=job: (j, build(j)))
                inflight.append((prepared, painter.submit(paint, prepared)))
            if not inflight:
                break
            prepared, painted = inflight.popleft()
            got = prepared.result()
            if got is None:  # made ahead past the end of the input
                exhausted = True
                continue
            yield got[0], got[1], painted.result()
    finally:
        if prefetch is not None:
            prefetch.shutdown(wait=True, cancel_futures=True)
        painter.shutdown(wait=True, cancel_futures=True)


def _to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """On CUDA: the tensor copied through pinned memory without waiting (the diffusion stream orders it)."""
    if torch.device(device).type != "cuda":
        return tensor
    return tensor.pin_memory().to(device, non_blocking=True)


def _gen_record(ctx: StageContext) -> dict[str, Any]:
    from hoigen.diffusion.conditions import CONDITION_MAPS, parse_condition_scales

    opts: SynthOptions = ctx.options
    _, info = pipeline_for(opts)
    spec = model_spec(opts)
    scales = control_scales(opts)
    controls = [{**c, "scale": scale} for c, scale in zip(info.get("controls", []), scales, strict=False)]
    extra: dict[str, Any] = {"controls": controls}
    if len(controls) > 1:
        extra["control_scale"] = [c["scale"] for c in controls]
    if not spec.adapters and spec.kinds:
        extra["control_guidance"] = [opts.control_start, opts.control_end]
    if spec.img2img:
        extra["init"] = {"image": "shade.png", "strength": opts.strength}
    return {
        **info,
        "steps": opts.steps,
        "guidance": opts.guidance,
        "scheduler": opts.scheduler,
        "size": opts.size,
        "negative_prompt": opts.negative_prompt,
        "conditions": list(CONDITION_MAPS) if spec.kinds == ["hoi"] else spec.kinds,
        "condition_scales": (
            dict(zip(CONDITION_MAPS, parse_condition_scales(opts.condition_scales), strict=True))
            if "hoi" in spec.kinds else None
        ),
        "control_scale": float(scales[0]) if spec.kinds else None,
        "blank_uncond": opts.blank_uncond,
        **extra,
    }


def _finish(
    sample: Sample,
    images: dict[int, _Painted],
    ctx: StageContext,
    members: dict[str, np.ndarray] | None = None,
    **extra: Any,
) -> Sample:
    """The output sample: the render sample plus its images, prompts, ``gen.json`` (and ``cond_*.png``).

    Under --min-pck, ``gen.json`` also holds ``filter`` (the settings), and per image its ``try`` (0 = first
    painting), ``verdict`` and ``agreement`` row (image 0's at the top level too)."""
    out = sample.copy()  # a lazy sample stays lazy: members passed through are written as their original bytes
    out.pop("__shard__", None)
    out.update(members or {})
    listing = []
    for j in sorted(images):
        painted = images[j]
        image_name, prompt_name = image_fields(j)
        out[image_name] = painted.image
        out[prompt_name] = painted.prompt
        entry: dict[str, Any] = {"image": image_name, "prompt": prompt_name, "seed": painted.seed}
        if painted.check is not None:
            entry.update({"try": painted.attempt, **painted.check})
        listing.append(entry)
    gen = {**_gen_record(ctx), "seed": listing[0]["seed"], **extra}
    if images[min(images)].check is not None:
        gen.update({k: listing[0][k] for k in ("try", "verdict", "agreement")})
        gen["filter"] = _filter_record(ctx.options)
    if len(listing) > 1:
        gen["images"] = listing
    out["gen.json"] = gen
    return out


def _filter_record(opts: SynthOptions) -> dict[str, Any]:
    from hoigen.imgeval.detectors import detector_name

    return {
        "min_pck": opts.min_pck,
        "pck_at": opts.pck_at,
        "max_tries": opts.max_tries,
        "detector": detector_name(_detector(opts.filter_detector), opts.filter_detector),
    }


# --- videos -------------------------------------------------------------------------------------


def _video_stage(samples: list[Sample], ctx: StageContext) -> Iterator[Sample]:
    from hoigen.diffusion.video import anchor_index, trajectory_groups, trajectory_id, write_mp4

    opts: SynthOptions = ctx.options
    per = opts.images_per_condition
    groups = trajectory_groups([s["__key__"] for s in samples])

    def video_jobs() -> Iterator[tuple[_Job, list[torch.Tensor]]]:
        for group in groups:
            first = samples[group[0]]
            trajectory = trajectory_id(first["__key__"])
            members = [samples[i] for i in group]
            conds = job_conditions(members, opts)
            init = _init_images(members, opts)
            for j in range(per):
                names = (trajectory,) if j == 0 else (trajectory, j)
                prompt = sample_prompt(ctx.inputs.prompt_templates, first, ctx.rng("video", *names))
                seed = derive_seed(ctx.seed, "synthesize-video", *names)
                anchor = anchor_index(len(group), opts.anchor)
                video = trajectory if j == 0 else f"{trajectory}_{j}"
                job = _Job([(i, j) for i in group], [prompt] * len(group), [seed] * len(group), anchor, video, init)
                yield job, conds

    results: dict[int, dict[int, _Painted]] = {}
    videos: dict[int, dict[str, Any]] = {}
    video_root = Path(ctx.out_dir) / VIDEO_DIR
    saved: dict[int, dict[str, np.ndarray]] = {}
    jobs = video_jobs()
    painted = _overlapped(lambda: next(jobs, None), ctx)
    writer = _Writer(FEED.writer)
    try:
        for job, conds, images in painted:
            frames = [samples[i]["ann.json"].get("trajectory", {}).get("frame", n)
                      for n, (i, _) in enumerate(job.items)]  # fmt: skip
            writer.submit(f"the frames of {job.video}", _write_frames, video_root / str(job.video), frames, images)
            clip = video_root / f"{job.video}.mp4"
            writer.submit(clip.name, partial(write_mp4, clip, images, fps=opts.fps))
            anchor_key = samples[job.items[job.anchor or 0][0]]["__key__"]
            for (i, j), image, prompt, seed in zip(job.items, images, job.prompts, job.seeds, strict=True):
                results.setdefault(i, {})[j] = _Painted(image, prompt, seed)
                if j == 0 and opts.save_conditions:
                    saved[i] = _saved_maps(conds, opts, job.items.index((i, j)))
                if j == 0:
                    videos[i] = {
                        "mp4": f"{VIDEO_DIR}/{job.video}.mp4",
                        "frames": len(job.items),
                        "anchor": anchor_key,
                        "attention": "self-attention over the anchor frame and the current frame",
                    }
        finished = [_finish(s, results[i], ctx, members=saved.get(i), video=videos[i]) for i, s in enumerate(samples)]
        yield from writer.put(finished)
        yield from writer.drain()
    finally:
        painted.close()
        writer.close()


def _write_frames(folder: Path, frames: list[int], images: list[np.ndarray]) -> None:
    """The frames of one clip as JPEGs named by frame number (each written under a temporary name)."""
    folder.mkdir(parents=True, exist_ok=True)
    for frame, image in zip(frames, images, strict=True):
        path = folder / f"{int(frame):03d}.jpg"
        ok, data = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
        if not ok:
            raise ValueError(f"{path}: JPEG encoding failed")
        tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
        tmp.write_bytes(data.tobytes())
        os.replace(tmp, path)
