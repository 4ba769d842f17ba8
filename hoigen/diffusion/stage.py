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

While the diffusion model paints batch k + 1 (in a helper thread: torch releases the GIL), the
stage hands batch k to the shard writer, which encodes the images and writes the tar.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

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
        extra = {OBJECTS_KEY: str(objects_dir_of(self.in_dir)), "diffusion_model": model_info}
        config = {**record(opts), "prompt_templates": templates}
        return Plan(tasks, opts, config, in_dir=self.in_dir, extra=extra, inputs=SynthInputs(tuple(templates)))


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


@dataclass
class _Job:
    """One diffusion call: ``items`` are (sample index, image number); ``anchor`` set for a video."""

    items: list[tuple[int, int]]
    prompts: list[str]
    seeds: list[int]
    anchor: int | None = None
    video: str | None = None
    init: torch.Tensor | None = None  # shade images for --init shade


def synth_stage(samples: Iterable[Sample], ctx: StageContext) -> Iterator[Sample]:
    """Add ``image.jpg``, ``prompt.txt`` and ``gen.json`` (and ``image_{j}.jpg`` ...) to every render sample."""
    opts: SynthOptions = ctx.options
    if opts.video:
        yield from _video_stage(list(samples), ctx)
        return
    per = opts.images_per_condition
    batch_size = opts.batch_size
    pending: list[Sample] = []  # samples whose images are not all painted yet, in input order
    results: dict[int, dict[int, tuple[np.ndarray, str, int]]] = {}
    base = 0  # global index of pending[0]

    def jobs() -> Iterator[tuple[_Job, list[torch.Tensor]]]:
        items: list[tuple[int, int]] = []
        for index, sample in enumerate(samples):
            pending.append(sample)
            for j in range(per):
                items.append((index, j))
                if len(items) == batch_size:
                    yield _still_job(items, pending, base, ctx)
                    items = []
        if items:
            yield _still_job(items, pending, base, ctx)

    saved: dict[int, dict[str, np.ndarray]] = {}
    for job, conds, images in _overlapped(jobs(), ctx):
        for n, ((index, j), image, prompt, seed) in enumerate(
            zip(job.items, images, job.prompts, job.seeds, strict=True)
        ):
            results.setdefault(index, {})[j] = (image, prompt, seed)
            if j == 0 and opts.save_conditions:
                saved[index] = _saved_maps(conds, opts, n)
        while pending and len(results.get(base, {})) == per:
            yield _finish(pending.pop(0), results.pop(base), ctx, members=saved.pop(base, None))
            base += 1


def _saved_maps(conds: list[torch.Tensor], opts: SynthOptions, n: int) -> dict[str, np.ndarray]:
    from hoigen.diffusion.controls import saved_maps

    return saved_maps(conds, model_spec(opts).kinds, n)


def _init_images(samples: list[Sample], opts: SynthOptions) -> torch.Tensor | None:
    from hoigen.diffusion.controls import init_tensor

    return init_tensor(samples, int(opts.size)) if opts.init == "shade" else None


def _still_job(items: list[tuple[int, int]], pending: list[Sample], base: int, ctx: StageContext) -> tuple:
    samples = [pending[index - base] for index, _ in items]
    conds = job_conditions(samples, ctx.options)
    prompts, seeds = [], []
    for s, (_, j) in zip(samples, items, strict=True):
        key = s["__key__"]
        names = (key,) if j == 0 else (key, j)  # image 0 keeps the seeds of single-image runs
        prompts.append(sample_prompt(ctx.inputs.prompt_templates, s, ctx.rng(*names)))
        seeds.append(derive_seed(ctx.seed, "synthesize", *names))
    return _Job(list(items), prompts, seeds, init=_init_images(samples, ctx.options)), conds


def _overlapped(
    jobs: Iterator[tuple[_Job, list[torch.Tensor]]], ctx: StageContext
) -> Iterator[tuple[_Job, list[torch.Tensor], list]]:
    """Run each job's diffusion in a helper thread, one job ahead of the consumer."""
    from hoigen.diffusion.prompts import TruncationWarner

    opts: SynthOptions = ctx.options
    pipe, _ = pipeline_for(opts)
    warner = TruncationWarner(pipe.tokenizer, list(ctx.inputs.prompt_templates), opts.prompts)
    scales = control_scales(opts)
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hoigen-diffusion")
    threads = torch.get_num_threads()

    def paint(job: _Job, conds: list[torch.Tensor]) -> list[np.ndarray]:
        from hoigen.diffusion.conditions import parse_condition_scales
        from hoigen.diffusion.pipeline import generate

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
        )

    try:
        ahead: tuple[_Job, list[torch.Tensor], Future] | None = None
        for job, conds in jobs:
            future = pool.submit(paint, job, conds)
            if ahead is not None:
                yield ahead[0], ahead[1], ahead[2].result()
            ahead = (job, conds, future)
        if ahead is not None:
            yield ahead[0], ahead[1], ahead[2].result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


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
    images: dict[int, tuple[np.ndarray, str, int]],
    ctx: StageContext,
    members: dict[str, np.ndarray] | None = None,
    **extra: Any,
) -> Sample:
    """The output sample: the render sample plus its images, prompts, ``gen.json`` (and ``cond_*.png``)."""
    out = {k: v for k, v in sample.items() if k != "__shard__"}
    out.update(members or {})
    listing = []
    for j in sorted(images):
        image, prompt, seed = images[j]
        image_name, prompt_name = image_fields(j)
        out[image_name] = image
        out[prompt_name] = prompt
        listing.append({"image": image_name, "prompt": prompt_name, "seed": seed})
    gen = {**_gen_record(ctx), "seed": listing[0]["seed"], **extra}
    if len(listing) > 1:
        gen["images"] = listing
    out["gen.json"] = gen
    return out


# --- videos -------------------------------------------------------------------------------------


def _video_stage(samples: list[Sample], ctx: StageContext) -> Iterator[Sample]:
    from hoigen.diffusion.video import anchor_index, trajectory_groups, trajectory_id, write_mp4

    opts: SynthOptions = ctx.options
    per = opts.images_per_condition
    groups = trajectory_groups([s["__key__"] for s in samples])

    def jobs() -> Iterator[tuple[_Job, list[torch.Tensor]]]:
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

    results: dict[int, dict[int, tuple[np.ndarray, str, int]]] = {}
    videos: dict[int, dict[str, Any]] = {}
    video_root = Path(ctx.out_dir) / VIDEO_DIR
    saved: dict[int, dict[str, np.ndarray]] = {}
    for job, conds, images in _overlapped(jobs(), ctx):
        frames = [samples[i]["ann.json"].get("trajectory", {}).get("frame", n) for n, (i, _) in enumerate(job.items)]
        _write_frames(video_root / str(job.video), frames, images)
        write_mp4(video_root / f"{job.video}.mp4", images, fps=opts.fps)
        anchor_key = samples[job.items[job.anchor or 0][0]]["__key__"]
        for (i, j), image, prompt, seed in zip(job.items, images, job.prompts, job.seeds, strict=True):
            results.setdefault(i, {})[j] = (image, prompt, seed)
            if j == 0 and opts.save_conditions:
                saved[i] = _saved_maps(conds, opts, job.items.index((i, j)))
            if j == 0:
                videos[i] = {
                    "mp4": f"{VIDEO_DIR}/{job.video}.mp4",
                    "frames": len(job.items),
                    "anchor": anchor_key,
                    "attention": "self-attention over the anchor frame and the current frame",
                }
    for i, sample in enumerate(samples):
        yield _finish(sample, results[i], ctx, members=saved.get(i), video=videos[i])


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
