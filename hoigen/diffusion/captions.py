"""Captions for training images: a captions file, per-sample ``prompt.txt``, a captioning hook, a fallback.

A training sample's caption is the first of:

1. its entry in a captions file (``--captions FILE``), looked up by sample key;
2. the sample's own ``prompt.txt`` (synthesize writes the prompt it painted with);
3. a captioning hook (``--caption-hook module:function``), for users with a captioning model
   (the paper captions DexYCB with LLaVA): called once per sample as ``function(image, ann)``
   with ``image`` the (H, W, 3) uint8 RGB target image and ``ann`` the sample's ``ann.json``
   dict (``{}`` when absent); it returns the caption string (empty: fall through). The hook is
   code, not data: hoigen imports the module and runs the function in its own process with your
   permissions, as ``python -c`` would; name only modules you would run yourself;
4. the fallback ``"a hand is grasping a {object}"`` with the object's name (``ann.json``
   ``object.name``, e.g. "mustard bottle" from DexYCB), else its category.

Captions file formats (chosen by suffix):

- ``.json``: one object mapping sample keys to captions, ``{"mug_0000_000_00": "a hand ..."}``;
- ``.jsonl``: one object per line, ``{"key": "...", "caption": "..."}``;
- anything else (``.tsv``, ``.txt``): one ``key<TAB>caption`` per line; blank lines and lines
  starting with ``#`` are skipped.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from hoigen.errors import HoigenError

FALLBACK_CAPTION = "a hand is grasping a {object}"

CaptionHook = Callable[[np.ndarray, dict[str, Any]], str]


def load_captions(path: Path | str) -> dict[str, str]:
    """Read a captions file (format in the module docstring) into {sample key: caption}."""
    path = Path(path)
    if not path.is_file():
        raise HoigenError(f"{path}: captions file not found; pass a .json, .jsonl or key<TAB>caption file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise HoigenError(f"{path}: captions file is not UTF-8 text; save it as UTF-8") from None
    suffix = path.suffix.lower()
    captions: dict[str, str] = {}
    if suffix == ".json":
        try:
            data = json.loads(text)
        except ValueError as error:
            raise HoigenError(f"{path}: not valid JSON ({error}); write one object {{key: caption}}") from None
        if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
            raise HoigenError(f"{path}: a .json captions file must be one object mapping keys to caption strings")
        return {str(k): v for k, v in data.items()}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if suffix == ".jsonl":
            try:
                row = json.loads(line)
                key, caption = str(row["key"]), str(row["caption"])
            except (ValueError, KeyError, TypeError):
                raise HoigenError(f'{path}:{number}: expected {{"key": ..., "caption": ...}}') from None
        else:
            if "\t" not in line:
                raise HoigenError(f"{path}:{number}: expected key<TAB>caption; separate them with one tab")
            key, caption = line.split("\t", 1)
        captions[key.strip()] = caption.strip()
    return captions


def load_caption_hook(spec: str) -> CaptionHook:
    """Import ``module:function`` (the module must be importable, e.g. on PYTHONPATH).

    This runs user code by design (the module's top level on import, the function per sample);
    every other input hoigen reads is data and is never executed (README, "Trust")."""
    from hoigen.trust import load_user_callable

    return load_user_callable(spec, "--caption-hook", "it as module:function, e.g. mycaptions:caption")


def caption_for(
    key: str,
    sample: dict[str, Any],
    image: np.ndarray,
    captions: dict[str, str] | None = None,
    hook: CaptionHook | None = None,
) -> tuple[str, str]:
    """(caption, where it came from: "file", "prompt.txt", "hook" or "fallback") of one sample."""
    if captions and key in captions:
        return captions[key], "file"
    prompt = sample.get("prompt.txt")
    if prompt:
        return str(prompt).strip(), "prompt.txt"
    ann = sample.get("ann.json") or {}
    if hook is not None:
        text = hook(image, ann)
        if not isinstance(text, str):
            raise HoigenError(f"caption hook returned {type(text).__name__} for {key}; it must return a string")
        if text.strip():
            return text.strip(), "hook"
    obj = ann.get("object") or {}
    return FALLBACK_CAPTION.format(object=obj.get("name") or obj.get("category") or "object"), "fallback"
