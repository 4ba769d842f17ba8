"""Training batches from shards and from a background buffer, and the ``hoigen train`` entry.

A shard sample gives the target image (``image.jpg``: synthesize or ``hoigen ingest dexycb``
output; for render shards ``shade.png`` stands in, and ``hoigen_train.json`` records it), its
9-channel conditions (``hoigen.diffusion.conditions.stack_conditions``, the same function synthesis
uses) and its caption (``hoigen.diffusion.captions``: captions file, ``prompt.txt``, hook, fallback).

With ``crop="hoi"`` (``--crop hoi``, the original code's data) each example is first cropped to
the square around its hand-object box (``seg.png``'s hand and object pixels, grown by 10% and padded
to a square: :func:`crop_to_hoi`), the target image and the condition maps alike.

The background buffer is a folder of scenery images trained with blank conditions (the paper's
background regularisation; ``hoigen backgrounds`` writes one); a ``captions.txt`` beside them
(``filename<TAB>caption``) gives their prompts, else "a photo of a scene".

Batches are a pure function of (seed, step): :class:`ExampleBatches` draws step ``s``'s batch from
the permutation of epoch ``s // batches_per_epoch``, so the data position of a resumed run is just
its step, and on ``world`` processes each rank takes its slice of the same global batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from hoigen.data.schema import derive_seed
from hoigen.diffusion.captions import FALLBACK_CAPTION, caption_for, load_caption_hook, load_captions
from hoigen.diffusion.options import TrainOptions
from hoigen.errors import HoigenError

__all__ = [
    "BG_CAPTION",
    "FALLBACK_CAPTION",
    "ExampleBatches",
    "ShardExamples",
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


class ShardExamples(Sequence):
    """The training examples of uncompressed tar shards, decoded on access (random access by offset).

    Opening lists every member's byte offset (one pass over the tar headers) and resolves each
    sample's caption (reading only ``prompt.txt`` and ``ann.json``, and the image when a caption
    hook needs it); ``examples[i]`` then reads and decodes sample i alone, so memory holds a batch,
    not the data set. ``info[i]`` has its key, prompt, caption source and target field.
    """

    def __init__(
        self,
        shards: list[Path],
        size: int,
        captions: dict[str, str] | None = None,
        hook: Any = None,
        crop: str = "none",
    ) -> None:
        from hoigen.data.codec import decode_field

        self.size = int(size)
        self.crop = crop
        self._decode = decode_field
        self.entries: list[tuple[Path, str, dict[str, tuple[int, int]]]] = []
        self.info: list[dict[str, str]] = []
        for shard in shards:
            shard = Path(shard)
            for key, members in _members(shard).items():
                target = "image.jpg" if "image.jpg" in members else "shade.png" if "shade.png" in members else None
                missing = [f for f in ("normal.png", "seg.png", "skeleton.png") if f not in members]
                if target is None or missing:
                    what = ", ".join(missing) if missing else "image.jpg or shade.png"
                    raise HoigenError(
                        f"{shard}: sample {key} has no {what} to train on; train on render/synthesize/ingest shards"
                    )
                self.entries.append((shard, key, members))
                light = self._read(len(self.entries) - 1, [f for f in ("prompt.txt", "ann.json") if f in members])
                image = self._read(len(self.entries) - 1, [target])[target] if hook is not None else None
                caption, source = caption_for(key, light, image, captions, hook)
                self.info.append({"key": key, "prompt": caption, "caption_source": source, "target": target})
        if not self.entries:
            raise HoigenError(f"{shards[0].parent}: the shards hold no samples to train on")

    def _read(self, i: int, fields: list[str]) -> dict[str, Any]:
        shard, key, members = self.entries[i]
        out: dict[str, Any] = {}
        with open(shard, "rb") as handle:
            for field in fields:
                offset, length = members[field]
                handle.seek(offset)
                out[field] = self._decode(field, handle.read(length), f"{shard}: {key}")
        return out

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        from hoigen.diffusion.conditions import stack_conditions

        meta = self.info[i]
        maps = self._read(i, [meta["target"], "normal.png", "seg.png", "skeleton.png"])
        if self.crop == "hoi":
            maps = crop_to_hoi(maps)
        return {
            **meta,
            "image": image_tensor(maps[meta["target"]], self.size),
            "conditions": stack_conditions(maps["normal.png"], maps["seg.png"], maps["skeleton.png"], self.size),
        }


def crop_to_hoi(maps: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The maps cropped to the square around the hand-object box of ``seg.png`` (padded with 0 past the
    frame; :func:`hoigen.geometry.crop.hoi_crop`), unscaled: the example's resize makes them ``size``.
    Colour images are area-resized, label maps nearest, when the target image's size differs from
    the maps' (e.g. a photo at another resolution); a sample without hand or object pixels is kept whole."""
    from hoigen.geometry.crop import hoi_crop

    seg = maps["seg.png"]
    window = hoi_crop(seg)
    if window is None:
        return maps
    out = {}
    for name, image in maps.items():
        if image.shape[:2] != seg.shape:
            image = cv2.resize(image, (seg.shape[1], seg.shape[0]), interpolation=cv2.INTER_AREA)
        out[name] = window.apply(image, nearest=name in ("seg.png", "skeleton.png"))
    return out


def _members(shard: Path) -> dict[str, dict[str, tuple[int, int]]]:
    """{key: {field: (data offset, size)}} of a shard, in tar order."""
    import tarfile

    from hoigen.data.shards import read_shard

    for _ in read_shard(shard, fields=()):  # checks the end-of-archive marker: a cut shard fails here
        pass
    out: dict[str, dict[str, tuple[int, int]]] = {}
    with tarfile.open(shard, mode="r:") as tar:
        for member in tar:
            base = member.name.rsplit("/", 1)[-1]
            if member.isfile() and "." in base:
                key, field = base.split(".", 1)
                out.setdefault(key, {})[field] = (member.offset_data, member.size)
    return out


def shard_examples(
    shards: list[Path],
    size: int,
    captions: dict[str, str] | None = None,
    hook: Any = None,
    crop: str = "none",
) -> ShardExamples:
    """Every sample of ``shards`` as a training example (decoded on access; see :class:`ShardExamples`)."""
    return ShardExamples(shards, size, captions, hook, crop)


def background_examples(folder: Path, size: int) -> list[dict[str, Any]]:
    """The background buffer: scenery images with blank conditions (held in memory: a buffer is small)."""
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

    def __init__(self, examples: Sequence[dict[str, Any]], batch_size: int, seed: int, name: str = "data") -> None:
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
    from hoigen.diffusion.train import ControlNetTrainer

    if opts.threads:
        torch.set_num_threads(opts.threads)
    captions = load_captions(opts.captions) if opts.captions is not None else None
    hook = load_caption_hook(opts.caption_hook) if opts.caption_hook else None
    examples = shard_examples(shards, opts.size, captions, hook, opts.crop)
    use_bg = opts.bg_dir is not None and opts.uses_background
    bg = background_examples(opts.bg_dir, opts.size) if use_bg else None
    pipe, _ = load_pipeline(opts.model, opts.controlnet, dtype="float32")
    described = getattr(examples, "info", examples)  # ShardExamples: without decoding images
    sources: dict[str, int] = {}
    for e in described:
        sources[e["caption_source"]] = sources.get(e["caption_source"], 0) + 1
    data = {
        "shards": [str(p) for p in shards],
        "samples": len(examples),
        "targets": sorted({e["target"] for e in described}),
        "captions": sources,
        "background_images": len(bg) if bg else 0,
        "background_dir": str(opts.bg_dir) if use_bg else None,
        "crop": opts.crop,
    }
    trainer = ControlNetTrainer(pipe, opts, Path(out), seed=seed, quiet=quiet, data=data)
    return trainer.train(
        ExampleBatches(examples, opts.batch_size, seed, "data"),
        bg_batches=ExampleBatches(bg, opts.batch_size, seed, "background") if bg else None,
        validation=examples[: opts.validation_images] if opts.validate_every else None,
    )
