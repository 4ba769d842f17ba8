"""``hoigen convert hoidiffusion``: HOIDiffusion's released checkpoints -> diffusers folders.

The original code (a T2I-Adapter fork of the LDM codebase) saves two kinds of files, both plain
``torch.save`` state dicts with any ``module.`` prefix removed:

- ``model_ad_<iter>.pth``: its ``CoAdapter``, three T2I-Adapters under ``pose_ada.``, ``depth_ada.``
  and ``mask_ada.`` (skeleton image, normal map, hand/object mask). Each is the original ``Adapter``
  with channels (320, 640, 1280, 1280), two residual blocks per level, ``sk=True``, ``ksize=1``,
  ``use_conv=False``: keys ``conv_in`` (3x3, 192 -> 320: the 3-channel image pixel-unshuffled by 8),
  ``body.<n>.block1`` (3x3), ``body.<n>.block2`` (1x1) and, on the first block of a level whose
  channels change, ``body.<n>.in_conv`` (1x1); levels after the first start with a 2x2 average pool.
  That is diffusers' ``T2IAdapter(adapter_type="full_adapter")`` block for block: ``body.<n>`` ->
  ``adapter.body.<n // 2>.resnets.<n % 2>`` and ``body.<n>.in_conv`` -> ``adapter.body.<n // 2>.in_conv``.
  The original adds the summed features after the last block of each UNet level, as diffusers'
  adapter pipeline does (``down_intrablock_additional_residuals``); its ``cond_weight`` is diffusers'
  ``adapter_conditioning_scale`` and the three adapters' weights (1, 1, 1) are MultiAdapter weights.
- ``model_sd_<iter>.ckpt`` (when the base was trained too) or the SD 1.4 ``.ckpt`` it started from:
  an LDM-layout Stable Diffusion checkpoint, converted by diffusers' own single-file loader.

Every file is read with ``torch.load(weights_only=True)`` (or safetensors): no pickled code runs.
The kinds written are ``pose`` (pose_ada), ``normal`` (depth_ada) and ``seg`` (mask_ada); feed them
with ``hoigen.diffusion.controls`` (``family="adapter"``).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from hoigen.errors import HoigenError

ADAPTER_PREFIXES = {"pose_ada": "pose", "depth_ada": "normal", "mask_ada": "seg"}
DEFAULT_CONFIG = "CompVis/stable-diffusion-v1-4"  # the base HOIDiffusion was trained on
CHECKPOINT_SUFFIXES = (".pth", ".pt", ".ckpt", ".safetensors", ".bin")
BLOCKS_PER_LEVEL = 2  # CoAdapter's nums_rb
RECORD = "hoidiffusion_convert.json"


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A checkpoint's tensors (``state_dict`` unwrapped, ``module.`` prefixes removed); no pickled code."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            data: Any = load_file(str(path))
        else:
            data = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as error:  # unpickling refused, truncated file, not a checkpoint
        first = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
        raise HoigenError(f"{path}: cannot read this checkpoint with weights_only=True ({first})") from None
    while isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]
    if not isinstance(data, dict):
        raise HoigenError(f"{path}: not a state dict")
    return {k.removeprefix("module."): v for k, v in data.items() if isinstance(v, torch.Tensor)}


def adapter_state_dicts(state: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """{kind: original Adapter state dict} from a CoAdapter checkpoint (``adapter.`` prefix tolerated)."""
    out: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        key = key.removeprefix("adapter.")
        prefix, _, rest = key.partition(".")
        if prefix in ADAPTER_PREFIXES:
            out.setdefault(ADAPTER_PREFIXES[prefix], {})[rest] = value
    return out


def adapter_to_diffusers(state: dict[str, torch.Tensor], where: str) -> Any:
    """One original ``Adapter`` state dict -> a diffusers ``T2IAdapter`` with the same weights (strict)."""
    from diffusers import T2IAdapter

    blocks = sorted({int(k.split(".")[1]) for k in state if k.startswith("body.")})
    if "conv_in.weight" not in state or not blocks or len(blocks) % BLOCKS_PER_LEVEL:
        raise HoigenError(f"{where}: not the layout of HOIDiffusion's CoAdapter (conv_in + body.N blocks)")
    if any(".skep." in k or ".down_opt." in k for k in state):
        raise HoigenError(f"{where}: adapter with skip convolutions or strided downsampling; only sk=True, "
                          "use_conv=False adapters (HOIDiffusion's CoAdapter) convert")
    levels = len(blocks) // BLOCKS_PER_LEVEL
    channels = [int(state[f"body.{level * BLOCKS_PER_LEVEL}.block1.weight"].shape[0]) for level in range(levels)]
    cin = int(state["conv_in.weight"].shape[1])
    in_channels = cin // 64
    renamed: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] == "conv_in":
            renamed[f"adapter.{key}"] = value
        elif parts[0] == "body" and parts[2] == "in_conv":
            renamed[f"adapter.body.{int(parts[1]) // BLOCKS_PER_LEVEL}.in_conv.{parts[3]}"] = value
        elif parts[0] == "body":
            level, block = divmod(int(parts[1]), BLOCKS_PER_LEVEL)
            renamed[f"adapter.body.{level}.resnets.{block}.{'.'.join(parts[2:])}"] = value
        else:
            raise HoigenError(f"{where}: unexpected adapter key {key!r}")
    adapter = T2IAdapter(
        in_channels=in_channels, channels=channels, num_res_blocks=BLOCKS_PER_LEVEL, downscale_factor=8,
        adapter_type="full_adapter",
    )
    try:
        adapter.load_state_dict(renamed, strict=True)
    except RuntimeError as error:
        raise HoigenError(f"{where}: adapter weights do not fit ({str(error).splitlines()[0][:200]})") from None
    return adapter


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def convert_hoidiffusion(src: Path, out: Path, config: str | None = None) -> list[str]:
    """Convert the release in ``src`` (a folder or one file) into ``out``; returns the lines to print."""
    from hoigen.diffusion.backend import quiet

    src, out = Path(src).expanduser(), Path(out).expanduser()
    if not src.exists():
        raise HoigenError(f"{src}: not found; pass the folder holding HOIDiffusion's model_ad_*.pth (and SD .ckpt)")
    files = [src] if src.is_file() else sorted(p for p in src.iterdir() if p.suffix.lower() in CHECKPOINT_SUFFIXES)
    adapters: dict[str, Any] = {}
    adapter_file: Path | None = None
    sd_file: Path | None = None
    for path in files:
        state = read_state_dict(path)
        parts = adapter_state_dicts(state)
        if parts:
            if adapter_file is not None:
                raise HoigenError(f"{src}: two adapter checkpoints ({adapter_file.name}, {path.name}); keep one")
            missing = sorted(set(ADAPTER_PREFIXES.values()) - set(parts))
            if missing:
                raise HoigenError(f"{path}: adapter checkpoint lacks {', '.join(missing)} (pose/depth/mask_ada)")
            adapters = {kind: adapter_to_diffusers(parts[kind], f"{path} [{kind}]") for kind in sorted(parts)}
            adapter_file = path
        elif any(k.startswith("model.diffusion_model.") for k in state):
            if sd_file is not None:
                raise HoigenError(f"{src}: two Stable Diffusion checkpoints ({sd_file.name}, {path.name}); keep one")
            sd_file = path
        del state
    if adapter_file is None:
        raise HoigenError(f"{src}: no HOIDiffusion adapter checkpoint (keys pose_ada./depth_ada./mask_ada.) found")
    out.mkdir(parents=True, exist_ok=True)
    lines = []
    record: dict[str, Any] = {
        "source": str(src),
        "adapters": {"file": adapter_file.name, "sha256": _sha256(adapter_file), "kinds": {}},
    }
    for kind, adapter in adapters.items():
        folder = out / "adapters" / kind
        with quiet():
            adapter.save_pretrained(folder)
        prefix = next(p for p, k in ADAPTER_PREFIXES.items() if k == kind)
        record["adapters"]["kinds"][kind] = {"from": prefix, "channels": list(adapter.config.channels)}
        lines.append(f"{kind}: {prefix} -> {folder}")
    if sd_file is not None:
        from hoigen.diffusion.pipeline import _load_single_file

        base = _load_single_file(str(sd_file), config or DEFAULT_CONFIG)
        with quiet():
            base.save_pretrained(out)
        record["base"] = {"file": sd_file.name, "sha256": _sha256(sd_file), "config": config or DEFAULT_CONFIG}
        lines.append(f"base: {sd_file.name} -> {out}")
    else:
        record["base"] = None
        lines.append(f"base: no Stable Diffusion checkpoint in {src}; paint with --model <SD 1.4 folder or id>")
    (out / RECORD).write_text(json.dumps(record, indent=2) + "\n")
    model = str(out) if sd_file is not None else "<SD 1.4>"
    lines.append(
        f"paint: hoigen synthesize --model {model} "
        + " ".join(f"--adapter {kind}={out / 'adapters' / kind}" for kind in adapters)
    )
    return lines
