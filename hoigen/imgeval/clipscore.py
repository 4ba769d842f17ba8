"""CLIPScore (Hessel et al. 2021) of images against their prompts, with a CLIP model from a local folder.

``CLIPScore(image, text) = 2.5 * max(cos(E_image, E_text), 0)`` on CLIP's projected embeddings; the
mean over images is reported with the plain mean cosine. The paper's Table 1 (0.68-0.78) is on this
2.5-scaled range. The folder is what ``CLIPModel.save_pretrained`` / a hub snapshot holds (config,
weights, tokenizer and preprocessor files), e.g. a local copy of ``openai/clip-vit-base-patch32``.

Prompts: a synthesize folder's ``prompt.txt`` / ``prompt_{j}.txt`` for ``image.jpg`` / ``image_{j}.jpg``,
or one ``--prompt`` for every image (needed for render folders and plain image folders).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from hoigen.errors import HoigenError

CLIPSCORE_WEIGHT = 2.5
CLIP_HINT = "a local CLIP folder, e.g. a download of openai/clip-vit-base-patch32 (config, weights, tokenizer)"


def load_clip(folder: Path | None, device: str | torch.device = "cpu") -> tuple[Any, Any]:
    """``(CLIPModel, CLIPProcessor)`` from a local folder, or a one-line error naming what to download."""
    if folder is None or not (Path(folder) / "config.json").is_file():
        where = f"{folder}: no config.json there" if folder is not None else "no --clip folder given"
        raise HoigenError(f"{where}; pass {CLIP_HINT}")
    from transformers import CLIPModel, CLIPProcessor
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        model = CLIPModel.from_pretrained(str(folder)).eval().to(device)
        processor = CLIPProcessor.from_pretrained(str(folder))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise HoigenError(f"{folder}: cannot load CLIP ({first}); pass {CLIP_HINT}") from None
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
    return model, processor


@torch.no_grad()
def clip_cosines(
    model: Any, processor: Any, images: list[np.ndarray], texts: list[str], device: str | torch.device = "cpu"
) -> np.ndarray:
    """Cosine similarity of each image with its own text (same length lists)."""
    if len(images) != len(texts):
        raise ValueError("clip_cosines: one text per image")
    inputs = processor(text=texts, images=images, return_tensors="pt", padding=True, truncation=True)
    inputs = {k: v.to(device) for k, v in inputs.items()}
    out = model(**inputs)
    img = torch.nn.functional.normalize(out.image_embeds.double(), dim=-1)
    txt = torch.nn.functional.normalize(out.text_embeds.double(), dim=-1)
    return (img * txt).sum(-1).cpu().numpy()


def clipscore_values(cosines: np.ndarray) -> np.ndarray:
    """Per-image CLIPScore from cosines: ``2.5 * max(cos, 0)``."""
    return CLIPSCORE_WEIGHT * np.clip(np.asarray(cosines, np.float64), 0, None)


def _prompt_member(member: str) -> str:
    """``image.jpg`` -> ``prompt.txt``; ``image_3.jpg`` -> ``prompt_3.txt``."""
    return "prompt" + member[len("image"):].rsplit(".", 1)[0] + ".txt"


def iter_image_prompts(folder: Path, prompt: str | None):
    """``(name, image, prompt)`` for every image of a stage folder or an image folder."""
    from hoigen.data.shards import list_shards
    from hoigen.imgeval.fid import iter_folder_images

    folder = Path(folder)
    if prompt is not None or not (folder.is_dir() and list_shards(folder)):
        if prompt is None:
            raise HoigenError(f"{folder}: plain image folders have no prompts; pass --prompt TEXT")
        for name, image in iter_folder_images(folder):
            yield name, image, prompt
        return
    from hoigen.data.codec import decode_field
    from hoigen.data.shards import read_shard
    from hoigen.imgeval.images import image_fields

    for shard in list_shards(folder):
        for raw in read_shard(shard, decode=False):
            members = [k for k in raw if not k.startswith("__")]
            painted = [m for m in image_fields(members) if m.startswith("image")]
            if not painted:
                raise HoigenError(
                    f"{shard}: sample {raw['__key__']} has no image*.jpg with a prompt; pass --prompt TEXT "
                    "to score shade.png renders against one text"
                )
            for member in painted:
                text_member = _prompt_member(member)
                if text_member not in raw:
                    raise HoigenError(f"{shard}: sample {raw['__key__']} has {member} but no {text_member}")
                image = decode_field(member, raw[member], str(shard))
                yield f"{raw['__key__']}.{member}", image, decode_field(text_member, raw[text_member])


def clipscore(
    folder: Path, clip: Path | None, prompt: str | None = None, device: str = "cpu", batch: int = 32
) -> dict[str, Any]:
    """Mean CLIPScore (and mean cosine) of every image of ``folder`` against its prompt."""
    model, processor = load_clip(clip, device)
    cosines: list[np.ndarray] = []
    images: list[np.ndarray] = []
    texts: list[str] = []
    for _name, image, text in iter_image_prompts(folder, prompt):
        images.append(image)
        texts.append(text)
        if len(images) >= batch:
            cosines.append(clip_cosines(model, processor, images, texts, device))
            images, texts = [], []
    if images:
        cosines.append(clip_cosines(model, processor, images, texts, device))
    if not cosines:
        raise HoigenError(f"{folder}: no images found")
    cos = np.concatenate(cosines)
    return {
        "images": int(len(cos)),
        "clipscore": float(clipscore_values(cos).mean()),
        "cosine": float(cos.mean()),
        "clip": str(clip),
    }
