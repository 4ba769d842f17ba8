"""``hoigen backgrounds``: the background buffer that ``hoigen train --bg-dir`` reads.

The paper regularises training with scenery images painted by the pretrained base model from
LLM-written prompts; this writes such a buffer: for every prompt of ``--prompts`` (and each of
``--images-per-prompt``), one text-to-image picture from ``--model`` (no ControlNet), as
``OUT/bg-000000.png`` ..., with ``OUT/captions.txt`` (``filename<TAB>prompt``, the format
:func:`hoigen.diffusion.train_data.background_examples` reads) and ``OUT/backgrounds.json`` (model,
settings, seed; written last). Image ``i`` has the seed ``derive_seed(seed, "background", i)``, so a
buffer is reproducible and does not depend on the batch size.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from hoigen.data.schema import derive_seed
from hoigen.diffusion.options import BackgroundOptions
from hoigen.errors import HoigenError
from hoigen.options import OptionError

CAPTIONS_FILE = "captions.txt"
RECORD_FILE = "backgrounds.json"


def background_prompts(opts: BackgroundOptions) -> list[str]:
    """The prompt of every image, in order (each prompt ``images_per_prompt`` times)."""
    from hoigen.diffusion.prompts import load_prompts

    if opts.prompts is None:
        raise OptionError("prompts", "is required: a text file with one scenery prompt per line")
    prompts = load_prompts(opts.prompts)
    if not prompts:
        raise HoigenError(f"{opts.prompts}: no prompts (one per line, # comments); add some scenery prompts")
    for prompt in prompts:
        if "\t" in prompt or "\n" in prompt:
            raise HoigenError(f"{opts.prompts}: a prompt holds a tab; captions.txt separates name and caption by one")
    return [p for p in prompts for _ in range(opts.images_per_prompt)]


def write_backgrounds(out: Path, opts: BackgroundOptions, seed: int = 0, quiet: bool = True) -> dict[str, Any]:
    """Paint the buffer into ``out`` (a new or empty folder); returns the record also in ``backgrounds.json``."""
    from hoigen.data.progress import make_progress
    from hoigen.diffusion.pipeline import ModelSpec, load_synthesis_pipeline
    from hoigen.diffusion.schedulers import set_scheduler
    from hoigen.diffusion.stage import resolve_device

    out = Path(out)
    prompts = background_prompts(opts)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise HoigenError(f"{out}: exists and is not an empty folder; pass a new --out for the background buffer")
    device = resolve_device(opts.device)
    spec = ModelSpec(model=opts.model, controlnets=(("none", ""),), model_config=opts.model_config)
    pipe, info = load_synthesis_pipeline(spec, device=device, dtype=None if opts.dtype == "auto" else opts.dtype)
    set_scheduler(pipe, opts.scheduler)
    size = opts.image_size()
    out.mkdir(parents=True, exist_ok=True)
    names: list[str] = []
    with make_progress(quiet) as progress:
        bar = progress.add_task("backgrounds", total=len(prompts), status="")
        for start in range(0, len(prompts), opts.batch_size):
            chunk = prompts[start : start + opts.batch_size]
            generators = [
                torch.Generator(device="cpu").manual_seed(derive_seed(seed, "background", start + j))
                for j in range(len(chunk))
            ]
            with torch.no_grad():
                images = pipe(
                    prompt=chunk,
                    negative_prompt=[opts.negative_prompt] * len(chunk) if opts.negative_prompt else None,
                    num_inference_steps=opts.steps,
                    guidance_scale=opts.guidance,
                    height=size,
                    width=size,
                    generator=generators,
                    output_type="np",
                ).images
            for j, image in enumerate(images):
                name = f"bg-{start + j:06d}.png"
                rgb = np.clip(np.round(np.asarray(image) * 255.0), 0, 255).astype(np.uint8)
                Image.fromarray(rgb).save(out / name)
                names.append(name)
            progress.update(bar, advance=len(chunk))
    (out / CAPTIONS_FILE).write_text("".join(f"{n}\t{p}\n" for n, p in zip(names, prompts, strict=True)))
    record = {
        "images": len(names),
        "prompts": str(opts.prompts),
        "seed": seed,
        "size": size,
        "model": {k: v for k, v in info.items() if isinstance(v, (str, int, float, bool, type(None)))},
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(opts).items()},
    }
    (out / RECORD_FILE).write_text(json.dumps(record, indent=2) + "\n")
    return record
