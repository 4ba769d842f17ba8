"""The mixed training set of the paper: hoigen's synthetic images beside real (or CAMERA) ones.

``mix_lists(out, real, ratio, mode, split)`` links the real NOCS-layout dataset into the export
folder as ``real/`` and writes ``mixed_<split>_list.txt``, one image path per line, relative to the
export folder (``train/00003/0004`` for hoigen's images, ``real/train/00012/0007`` for real ones):

- ``mode="replace"``: as many images as the real set has, a share ``ratio`` of them synthetic (the
  synthetic images take the place of rendered/real ones);
- ``mode="add"``: every real image plus synthetic images making up ``ratio`` of the total.

Images are drawn without replacement in a seeded order; the real set's images are the lines of its
``<split>_list.txt`` or, without one, every ``<split>/<scene>/<idx>_color.png`` under it.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from hoigen.data.atomic import atomic_write_bytes
from hoigen.data.schema import derive_seed
from hoigen.errors import HoigenError

MIX_MODES = ("replace", "add")
REAL_LINK = "real"


def list_images(root: Path, split: str) -> list[str]:
    """Image paths (``<split>/<scene>/<idx>``) of a NOCS-layout folder, sorted."""
    listed = root / f"{split}_list.txt"
    if listed.exists():
        return sorted(line.strip() for line in listed.read_text().splitlines() if line.strip())
    return sorted(str(p.relative_to(root))[: -len("_color.png")] for p in (root / split).glob("*/*_color.png"))


def mixed_counts(n_real: int, n_synth: int, ratio: float, mode: str) -> tuple[int, int]:
    """(real, synthetic) image counts of the mix, limited by what is available."""
    if mode == "replace":
        synth = min(round(ratio * n_real), n_synth)
        return n_real - synth, synth
    synth = n_synth if ratio >= 1 else min(round(ratio / (1 - ratio) * n_real), n_synth)
    return n_real, synth


def mix_lists(out: Path, real: Path, ratio: float, mode: str = "replace", split: str = "train", seed: int = 0) -> Path:
    """Write ``mixed_<split>_list.txt`` in ``out`` (a hoigen NOCS export) with ``real`` linked in."""
    out, real = Path(out), Path(real)
    if mode not in MIX_MODES:
        raise HoigenError(f"--mix-mode must be one of {', '.join(MIX_MODES)}, got '{mode}'")
    if not 0.0 <= ratio <= 1.0:
        raise HoigenError(f"--ratio must be in [0, 1], got {ratio}")
    if not real.is_dir():
        raise HoigenError(f"{real}: real dataset folder does not exist; pass --mix with a NOCS-layout folder")
    real_images = list_images(real, split)
    if not real_images:
        raise HoigenError(f"{real}: no {split} images found ({split}_list.txt or {split}/*/*_color.png)")
    synth_images = list_images(out, split)
    link = out / REAL_LINK
    if link.is_symlink() or not link.exists():
        if link.is_symlink():
            link.unlink()
        os.symlink(real.resolve(), link, target_is_directory=True)
    elif link.resolve() != real.resolve():
        raise HoigenError(f"{link}: exists and is not a link to {real}; remove it or export into a new folder")
    n_real, n_synth = mixed_counts(len(real_images), len(synth_images), ratio, mode)
    rng = np.random.default_rng(derive_seed(seed, "mix", split))
    picked_real = [real_images[i] for i in sorted(rng.permutation(len(real_images))[:n_real])]
    picked_synth = [synth_images[i] for i in sorted(rng.permutation(len(synth_images))[:n_synth])]
    lines = [f"{REAL_LINK}/{p}" for p in picked_real] + picked_synth
    order = rng.permutation(len(lines))
    path = out / f"mixed_{split}_list.txt"
    atomic_write_bytes(path, "".join(f"{lines[i]}\n" for i in order).encode())
    return path
