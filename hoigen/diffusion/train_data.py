"""Training batches from shards and from a background buffer, and the ``hoigen train`` entry.

A shard sample gives the target image (``image.jpg``: synthesize or ``hoigen ingest dexycb``
output; for render shards ``shade.png`` stands in, and ``hoigen_train.json`` records it), its
9-channel conditions (``hoigen.diffusion.conditions.stack_conditions``, the same function synthesis
uses) and its caption (``hoigen.diffusion.captions``: captions file, ``prompt.txt``, hook, fallback).

The background buffer is a folder of scenery images trained with blank conditions (the paper's
background regularisation); a ``captions.txt`` beside them (``filename<TAB>caption``) gives their
prompts, else "a photo of a scene".

Batches are a pure function of (seed, step): :class:`ExampleBatches` draws step ``s``'s batch from
the permutation of epoch ``s // batches_per_epoch``, so the data position of a resumed run is just
its step, and on ``world`` processes each rank takes its slice of the same global batch.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from hoigen.config import TrainOptions
from hoigen.data.schema import derive_seed
from hoigen.data.shards import read_shard
from hoigen.diffusion.captions import FALLBACK_CAPTION, caption_for, load_caption_hook, load_captions
from hoigen.errors import HoigenError

__all__ = [
    "BG_CAPTION",
    "FALLBACK_CAPTION",
    "ExampleBatches",
    "background_examples",
    "image_tensor",
    "shard_examples",
    "train_from_shards",
]

BG_CAPTION = "a photo of a scene"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
TRAIN_FIELDS = ("image.jpg", "shade.png", "normal.png", "seg.png", "skeleton.png", "prompt.txt", "ann.json")


def image_tensor(image: np.ndarray, size: int) -> torch.Tensor:
    """(H,W,3) uint8 -> (3,size,size) float in [-1, 1]."""
    image = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
    return torch.from_numpy(image).permute(2, 0, 1).float() / 127.5 - 1.0


def shard_examples(
    shards: list[Path],
    size: int,
    captions: dict[str, str] | None = None,
    hook: Any = None,
) -> list[dict[str, Any]]:
    """Every sample of ``shards`` as a training example (image, conditions, prompt, key, sources)."""
    from hoigen.diffusion.conditions import stack_conditions

    examples = []
    for shard in shards:
        for s in read_shard(shard, fields=TRAIN_FIELDS):
            image = s.get("image.jpg", s.get("shade.png"))
            if image is None:
                raise HoigenError(f"{shard}: sample {s['__key__']} has no image.jpg or shade.png to train on")
            caption, source = caption_for(s["__key__"], s, image, captions, hook)
            examples.append(
                {
                    "key": s["__key__"],
                    "image": image_tensor(image, size),
                    "prompt": caption,
                    "caption_source": source,
                    "target": "image.jpg" if "image.jpg" in s else "shade.png",
                    "conditions": stack_conditions(s["normal.png"], s["seg.png"], s["skeleton.png"], size),
                }
            )
    if not examples:
        raise HoigenError(f"{shards[0].parent}: the shards hold no samples to train on")
    return examples


def background_examples(folder: Path, size: int) -> list[dict[str, Any]]:
    """The background buffer: scenery images with blank conditions."""
    from hoigen.diffusion.conditions import blank_conditions

    folder = Path(folder)
    if not folder.is_dir():
        raise HoigenError(f"{folder}: background folder does not exist; pass --bg-dir with scenery images")
    captions: dict[str, str] = {}
    if (folder / "captions.txt").exists():
        for line in (folder / "captions.txt").read_text().splitlines():
            if "\t" in line:
                name, text = line.split("\t", 1)
                captions[name] = text
    out = []
    for path in sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            raise HoigenError(f"{path}: not a readable image; remove it from the background folder")
        out.append(
            {
                "key": path.name,
                "image": image_tensor(cv2.cvtColor(image, cv2.COLOR_BGR2RGB), size),
                "conditions": blank_conditions(size, size),
                "prompt": captions.get(path.name, BG_CAPTION),
            }
        )
    if not out:
        raise HoigenError(f"{folder}: no .jpg/.png images in the background folder")
    return out


class ExampleBatches:
    """Shuffled batches as a pure function of (seed, step index): resumable and rank-splittable.

    ``batch(i, rank, world)`` is this rank's part of global batch ``i`` (0-based): the global batch
    holds ``batch_size * world`` examples (``batch_size`` per process) taken from the permutation of
    its epoch; a ragged end of an epoch is dropped; a set smaller than a global batch gives all of it.
    """

    def __init__(self, examples: list[dict[str, Any]], batch_size: int, seed: int, name: str = "data") -> None:
        if not examples:
            raise HoigenError(f"{name}: no examples to make batches from")
        self.examples = examples
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.name = name

    def indices(self, i: int, rank: int = 0, world: int = 1) -> list[int]:
        count = len(self.examples)
        global_size = self.batch_size * world
        per_epoch = max(count // global_size, 1)
        epoch, within = divmod(int(i), per_epoch)
        order = np.random.default_rng(derive_seed(self.seed, self.name, "epoch", epoch)).permutation(count)
        chunk = order[within * global_size : (within + 1) * global_size]
        mine = chunk[rank * self.batch_size : (rank + 1) * self.batch_size]
        return [int(j) for j in (mine if len(mine) else chunk)]

    def batch(self, i: int, rank: int = 0, world: int = 1) -> dict[str, Any]:
        chunk = [self.examples[j] for j in self.indices(i, rank, world)]
        return {
            "image": torch.stack([c["image"] for c in chunk]),
            "conditions": torch.stack([c["conditions"] for c in chunk]),
            "prompt": [c["prompt"] for c in chunk],
            "key": [c.get("key", "") for c in chunk],
        }


def train_from_shards(shards: list[Path], out: Path, opts: TrainOptions, seed: int, quiet: bool) -> dict[str, Any]:
    """Fine-tune ``opts.model``'s ControlNet on ``shards`` and save the pipeline to ``out``."""
    from hoigen.diffusion.pipeline import load_pipeline
    from hoigen.diffusion.train import TrainSettings, train_controlnet

    if opts.threads:
        torch.set_num_threads(opts.threads)
    captions = load_captions(opts.captions) if opts.captions is not None else None
    hook = load_caption_hook(opts.caption_hook) if opts.caption_hook else None
    examples = shard_examples(shards, opts.size, captions, hook)
    use_bg = opts.bg_dir is not None and opts.bg_weight > 0
    bg = background_examples(opts.bg_dir, opts.size) if use_bg else None
    pipe, _ = load_pipeline(opts.model, opts.controlnet, dtype="float32")
    sources: dict[str, int] = {}
    for e in examples:
        where = e["caption_source"]
        sources[where] = sources.get(where, 0) + 1
    data = {
        "shards": [str(p) for p in shards],
        "samples": len(examples),
        "targets": sorted({e["target"] for e in examples}),
        "captions": sources,
        "background_images": len(bg) if bg else 0,
        "background_dir": str(opts.bg_dir) if use_bg else None,
    }
    settings = TrainSettings.from_options(opts)
    return train_controlnet(
        pipe,
        ExampleBatches(examples, opts.batch_size, seed, "data"),
        steps=opts.steps,
        out_dir=Path(out),
        lr=opts.lr,
        seed=seed,
        text_dropout=opts.text_dropout,
        bg_batches=ExampleBatches(bg, opts.batch_size, seed, "background") if bg else None,
        bg_every=opts.bg_every if bg else 0,
        bg_weight=opts.bg_weight,
        data=data,
        settings=settings,
        validation=examples[: settings.validation_images] if settings.validate_every else None,
        quiet=quiet,
        options={k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(opts).items()},
    )
