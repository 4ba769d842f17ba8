"""Training batches from shards and from a background buffer, and the ``hoigen train`` entry.

A shard sample gives the target image (``image.jpg``; for render shards ``shade.png`` stands in,
and ``hoigen_train.json`` records it), its 9-channel conditions and its caption (``prompt.txt``, or
"a hand is grasping a {category}"). The background buffer is a folder of scenery images trained with
blank conditions (the paper's background regularisation); a ``captions.txt`` beside them
(``filename<TAB>caption``) gives their prompts, else "a photo of a scene".
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from hoigen.config import TrainOptions
from hoigen.data.progress import make_progress
from hoigen.data.shards import read_shard
from hoigen.errors import HoigenError

FALLBACK_CAPTION = "a hand is grasping a {object}"
BG_CAPTION = "a photo of a scene"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
TRAIN_FIELDS = ("image.jpg", "shade.png", "normal.png", "seg.png", "skeleton.png", "prompt.txt", "ann.json")


def image_tensor(image: np.ndarray, size: int) -> torch.Tensor:
    """(H,W,3) uint8 -> (3,size,size) float in [-1, 1]."""
    image = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
    return torch.from_numpy(image).permute(2, 0, 1).float() / 127.5 - 1.0


def shard_examples(shards: list[Path], size: int) -> list[dict[str, Any]]:
    """Every sample of ``shards`` as a training example (image, conditions, prompt, target field)."""
    from hoigen.diffusion.conditions import stack_conditions

    examples = []
    for shard in shards:
        for s in read_shard(shard, fields=TRAIN_FIELDS):
            image = s.get("image.jpg", s.get("shade.png"))
            caption = s.get("prompt.txt") or FALLBACK_CAPTION.format(object=s["ann.json"]["object"]["category"])
            examples.append(
                {
                    "image": image_tensor(image, size),
                    "prompt": caption,
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
                "image": image_tensor(cv2.cvtColor(image, cv2.COLOR_BGR2RGB), size),
                "conditions": blank_conditions(size, size),
                "prompt": captions.get(path.name, BG_CAPTION),
            }
        )
    if not out:
        raise HoigenError(f"{folder}: no .jpg/.png images in the background folder")
    return out


def batches(examples: list[dict[str, Any]], batch_size: int, seed: int) -> Iterator[dict[str, Any]]:
    """Endless shuffled batches (deterministic for a seed)."""
    rng = np.random.default_rng(seed)
    while True:
        order = rng.permutation(len(examples))
        stop = max(len(order) - len(order) % batch_size, 1)  # drop a ragged last batch
        for i in range(0, stop, batch_size):
            chunk = [examples[j] for j in order[i : i + batch_size]]
            yield {
                "image": torch.stack([c["image"] for c in chunk]),
                "conditions": torch.stack([c["conditions"] for c in chunk]),
                "prompt": [c["prompt"] for c in chunk],
            }


def train_from_shards(shards: list[Path], out: Path, opts: TrainOptions, seed: int, quiet: bool) -> dict[str, Any]:
    """Fine-tune ``opts.model``'s ControlNet on ``shards`` and save the pipeline to ``out``."""
    from hoigen.diffusion.pipeline import load_pipeline
    from hoigen.diffusion.train import train_controlnet

    examples = shard_examples(shards, opts.size)
    bg = background_examples(opts.bg_dir, opts.size) if opts.bg_dir is not None else None
    pipe, _ = load_pipeline(opts.model)
    targets = sorted({e["target"] for e in examples})
    data = {"shards": [str(p) for p in shards], "samples": len(examples), "targets": targets,
            "background_images": len(bg) if bg else 0}
    with make_progress(quiet) as progress:
        bar = progress.add_task("train", total=opts.steps, status="")

        def log(entry: dict[str, Any]) -> None:
            progress.update(bar, advance=1, status=f"loss {entry['loss']:.4f}")

        return train_controlnet(
            pipe,
            batches(examples, opts.batch_size, seed),
            steps=opts.steps,
            out_dir=Path(out),
            lr=opts.lr,
            seed=seed,
            text_dropout=opts.text_dropout,
            bg_batches=batches(bg, opts.batch_size, seed + 1) if bg else None,
            bg_every=opts.bg_every if bg else 0,
            bg_weight=opts.bg_weight,
            log=log,
            data=data,
        )
