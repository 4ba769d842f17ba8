"""Tiny Stable-Diffusion + ControlNet pipelines built from configs, offline.

They stand in for Stable Diffusion 1.5 + a trained HOI ControlNet where no model hub is reachable:
same classes, same call path, same condition tensor, a few hundred thousand parameters per module.
Two architectures (``TinyArch``), each with its own name in every output made with it:

- ``tiny-random`` (``TINY_RANDOM``): seeded random weights; its images are noise-like (tests use it);
- ``tiny-trained`` (``TINY_TRAINED``): VAE factor 4 (16x16 latents at 64 px) and v-prediction; its
  weights were trained offline on hoigen renders (``hoigen.diffusion.tiny_build``, ``make
  tiny-trained``) and ship in ``hoigen/diffusion/assets/tiny-trained/`` (``load_tiny_trained``).
  It paints plain shaded renders (``shade.png``) that follow the conditions, never photos.

The tokenizer is a byte-level CLIP BPE with no merges (one token per UTF-8 byte, 514 tokens), built
in code, so prompts are truncated at about 75 characters.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from hoigen.diffusion.backend import (
    AutoencoderKL,
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTokenizer,
    ControlNetModel,
    DDIMScheduler,
    StableDiffusionControlNetPipeline,
    UNet2DConditionModel,
)
from hoigen.diffusion.conditions import CONDITIONING_CHANNELS

TINY_MODEL_NAME = "tiny-random"
TINY_TRAINED_NAME = "tiny-trained"
TINY_TRAINED_DIR = Path(__file__).parent / "assets" / TINY_TRAINED_NAME
TINY_TRAINED_WEIGHTS = "weights.safetensors"
TINY_TRAINED_RECORD = "tiny_trained.json"

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
MAX_TOKENS = 77
HIDDEN = 32
# VAE levels: each level past the first halves the resolution (2**3 = 8, as in Stable Diffusion).
VAE_CHANNELS = (32, 32, 64, 64)
# The ControlNet's condition encoder must downsample the condition image to the latent resolution.
CONDITION_EMBEDDING_CHANNELS = (16, 16, 32, 32)


@dataclass(frozen=True)
class TinyArch:
    """The configs of one tiny pipeline (the parts that differ between tiny-random and tiny-trained)."""

    name: str
    vae_channels: tuple[int, ...]  # one entry per VAE level; the VAE factor is 2 ** (levels - 1)
    vae_groups: int  # GroupNorm groups of the VAE (divides every VAE channel count)
    condition_channels: tuple[int, ...]  # the ControlNet's condition encoder, one entry per VAE level
    unet_sample_size: int
    prediction_type: str = "epsilon"
    timestep_spacing: str = "leading"  # diffusers' default; "trailing" starts few-step sampling at t = 999


TINY_RANDOM = TinyArch(TINY_MODEL_NAME, VAE_CHANNELS, 32, CONDITION_EMBEDDING_CHANNELS, 32)
# 64 px images -> 16x16 latents (enough for a hand's silhouette); v-prediction keeps the first of few
# DDIM steps well posed (epsilon-prediction divides its error by sqrt(alpha_bar) ~ 0.07 there).
TINY_TRAINED = TinyArch(TINY_TRAINED_NAME, (16, 32, 64), 16, (16, 32, 32), 16, "v_prediction", "trailing")


def _byte_to_char() -> dict[int, str]:
    """The byte-level BPE alphabet: printable bytes map to themselves, the others to code points >= 256."""
    printable = set(range(33, 127)) | set(range(161, 173)) | set(range(174, 256))
    table: dict[int, str] = {}
    shifted = 0
    for byte in range(256):
        if byte in printable:
            table[byte] = chr(byte)
        else:
            table[byte] = chr(256 + shifted)
            shifted += 1
    return table


def build_tiny_tokenizer() -> CLIPTokenizer:
    """A CLIP tokenizer with one token per byte (and per word-final byte), no merges."""
    alphabet = list(_byte_to_char().values())
    vocab: dict[str, int] = {}
    for char in alphabet:
        vocab[char] = len(vocab)
    for char in alphabet:
        vocab[char + "</w>"] = len(vocab)
    vocab[BOS_TOKEN] = len(vocab)
    vocab[EOS_TOKEN] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=MAX_TOKENS)


def build_tiny_pipeline(seed: int = 0, arch: TinyArch = TINY_RANDOM) -> StableDiffusionControlNetPipeline:
    """Build a tiny pipeline; the same seed and arch give the same weights (global RNG state is left untouched)."""
    tokenizer = build_tiny_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            sample_size=arch.unet_sample_size,
            in_channels=4,
            out_channels=4,
            block_out_channels=(32, 64),
            layers_per_block=1,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=HIDDEN,
            attention_head_dim=8,
            norm_num_groups=32,
        )
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            block_out_channels=arch.vae_channels,
            down_block_types=("DownEncoderBlock2D",) * len(arch.vae_channels),
            up_block_types=("UpDecoderBlock2D",) * len(arch.vae_channels),
            latent_channels=4,
            layers_per_block=1,
            norm_num_groups=arch.vae_groups,
            sample_size=64,
        )
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=len(tokenizer),
                hidden_size=HIDDEN,
                intermediate_size=64,
                num_hidden_layers=2,
                num_attention_heads=4,
                max_position_embeddings=MAX_TOKENS,
                bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
            )
        )
        controlnet = ControlNetModel.from_unet(
            unet,
            conditioning_channels=CONDITIONING_CHANNELS,
            conditioning_embedding_out_channels=arch.condition_channels,
        )
    scheduler = DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        **_non_default(prediction_type=arch.prediction_type, timestep_spacing=arch.timestep_spacing),
    )
    pipe = StableDiffusionControlNetPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        controlnet=controlnet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    for module in (unet, vae, text_encoder, controlnet):
        module.eval()
    pipe.set_progress_bar_config(disable=True)
    pipe.hoigen_info = {"model": arch.name, "kind": arch.name, "seed": seed}
    return pipe


def _non_default(**kwargs: str) -> dict[str, str]:
    """Only the scheduler settings that differ from diffusers' defaults: tiny-random's config stays as it was."""
    defaults = {"prediction_type": "epsilon", "timestep_spacing": "leading"}
    return {k: v for k, v in kwargs.items() if v != defaults[k]}


def tiny_modules(pipe: StableDiffusionControlNetPipeline) -> dict[str, torch.nn.Module]:
    """The pipeline's weighted modules by name (what the tiny-trained asset stores)."""
    return {"vae": pipe.vae, "text_encoder": pipe.text_encoder, "unet": pipe.unet, "controlnet": pipe.controlnet}


def load_tiny_trained(
    folder: Path | str = TINY_TRAINED_DIR,
) -> tuple[StableDiffusionControlNetPipeline, dict[str, Any]]:
    """The tiny-trained pipeline: the ``TINY_TRAINED`` architecture with the weights stored in ``folder``.

    Returns (pipe, record): the record is the asset's ``tiny_trained.json`` (how it was trained, the
    weights' sha256, the learning measure). Raises ``HoigenError`` when the asset is missing.
    """
    import hashlib

    from safetensors.torch import load_file

    from hoigen.errors import HoigenError

    folder = Path(folder)
    weights, record_path = folder / TINY_TRAINED_WEIGHTS, folder / TINY_TRAINED_RECORD
    if not weights.is_file() or not record_path.is_file():
        raise HoigenError(
            f"{folder}: the tiny-trained weights are missing; rebuild them with `make tiny-trained` "
            "or use --model tiny-random"
        )
    record = json.loads(record_path.read_text())
    pipe = build_tiny_pipeline(seed=int(record.get("seed", 0)), arch=TINY_TRAINED)
    state = load_file(str(weights))
    for name, module in tiny_modules(pipe).items():
        part = {k.split(".", 1)[1]: v.float() for k, v in state.items() if k.split(".", 1)[0] == name}
        module.load_state_dict(part, strict=True)
    pipe.vae.register_to_config(scaling_factor=float(record["vae_scaling_factor"]))
    pipe.hoigen_info = {"model": TINY_TRAINED_NAME, "kind": TINY_TRAINED_NAME, "seed": record.get("seed", 0)}
    record = {**record, "weights_sha256": hashlib.sha256(weights.read_bytes()).hexdigest()}
    return pipe, record


# --- fixtures for the real-weights paths (tests, benchmarks): tiny random models of the real classes ----


def build_tiny_controlnet(conditioning_channels: int = 3, seed: int = 1) -> ControlNetModel:
    """A ControlNet for the tiny UNet taking ``conditioning_channels`` (3, as the public v1.1 ControlNets)."""
    unet = build_tiny_pipeline(0).unet
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = ControlNetModel.from_unet(
            unet, conditioning_channels=conditioning_channels,
            conditioning_embedding_out_channels=CONDITION_EMBEDDING_CHANNELS,
        )
        # from_unet zero-initialises the output convolutions (no effect until trained): give them weights
        for module in (*net.controlnet_down_blocks, net.controlnet_mid_block, net.controlnet_cond_embedding.conv_out):
            torch.nn.init.normal_(module.weight, std=0.05)
    return net.eval()


def tiny_adapter_channels() -> tuple[int, ...]:
    """The tiny UNet's block channels: a T2I-Adapter for it has one level per UNet down block."""
    return (32, 64)


def ldm_state_dict(pipe) -> dict[str, torch.Tensor]:  # noqa: ANN001 - any pipeline with unet, vae, text_encoder
    """The pipeline's UNet, VAE and CLIP text encoder as an LDM/CompVis single-file state dict.

    The inverse of diffusers' single-file conversion (``diffusers.loaders.single_file_utils``), written
    for the test fixtures: a checkpoint in the layout HOIDiffusion's code saves (``model.diffusion_model.*``,
    ``first_stage_model.*``, ``cond_stage_model.transformer.*``).
    """
    from diffusers.loaders.single_file_utils import DIFFUSERS_TO_LDM_MAPPING

    out: dict[str, torch.Tensor] = {}
    cfg = pipe.unet.config
    layers = cfg.layers_per_block
    attn_up = [t.startswith("CrossAttn") for t in cfg.up_block_types]
    resnet = (("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("norm2", "out_layers.0"), ("conv2", "out_layers.3"),
              ("time_emb_proj", "emb_layers.1"), ("conv_shortcut", "skip_connection"))

    def res(rest: str) -> str:
        for a, b in resnet:
            rest = rest.replace(a, b)
        return rest

    top = DIFFUSERS_TO_LDM_MAPPING["unet"]["layers"]
    for key, value in pipe.unet.state_dict().items():
        p = key.split(".")
        if key in top:
            new = top[key]
        elif p[0] == "down_blocks" and p[2] == "downsamplers":
            new = f"input_blocks.{(layers + 1) * (int(p[1]) + 1)}.0.op." + ".".join(p[5:])
        elif p[0] == "down_blocks":
            block = (layers + 1) * int(p[1]) + int(p[3]) + 1
            rest = ".".join(p[4:])
            new = f"input_blocks.{block}.0.{res(rest)}" if p[2] == "resnets" else f"input_blocks.{block}.1.{rest}"
        elif p[0] == "up_blocks" and p[2] == "upsamplers":
            i = int(p[1])
            new = f"output_blocks.{(layers + 1) * i + layers}.{2 if attn_up[i] else 1}.conv." + ".".join(p[5:])
        elif p[0] == "up_blocks":
            block = (layers + 1) * int(p[1]) + int(p[3])
            rest = ".".join(p[4:])
            new = f"output_blocks.{block}.0.{res(rest)}" if p[2] == "resnets" else f"output_blocks.{block}.1.{rest}"
        elif p[0] == "mid_block":
            rest = ".".join(p[3:])
            new = f"middle_block.{2 * int(p[2])}.{res(rest)}" if p[1] == "resnets" else f"middle_block.1.{rest}"
        else:
            raise KeyError(f"no LDM name for UNet key {key}")
        out["model.diffusion_model." + new] = value

    vae_top = DIFFUSERS_TO_LDM_MAPPING["vae"]
    levels = len(pipe.vae.config.block_out_channels)
    attention = (("group_norm", "norm"), ("to_q", "q"), ("to_k", "k"), ("to_v", "v"), ("to_out.0", "proj_out"))
    for key, value in pipe.vae.state_dict().items():
        p = key.split(".")
        if key in vae_top:
            new = vae_top[key]
        elif p[1] == "down_blocks" and p[3] == "downsamplers":
            new = f"encoder.down.{p[2]}.downsample." + ".".join(p[5:])
        elif p[1] == "down_blocks":
            new = f"encoder.down.{p[2]}.block.{p[4]}." + ".".join(p[5:]).replace("conv_shortcut", "nin_shortcut")
        elif p[1] == "up_blocks" and p[3] == "upsamplers":
            new = f"decoder.up.{levels - 1 - int(p[2])}.upsample." + ".".join(p[5:])
        elif p[1] == "up_blocks":
            rest = ".".join(p[5:]).replace("conv_shortcut", "nin_shortcut")
            new = f"decoder.up.{levels - 1 - int(p[2])}.block.{p[4]}.{rest}"
        elif p[1] == "mid_block" and p[2] == "resnets":
            new = f"{p[0]}.mid.block_{int(p[3]) + 1}." + ".".join(p[4:])
        elif p[1] == "mid_block":
            rest = ".".join(p[4:])
            for a, b in attention:
                rest = rest.replace(a, b)
            new = f"{p[0]}.mid.attn_1.{rest}"
            if value.ndim == 2:
                value = value[:, :, None, None]
        else:
            raise KeyError(f"no LDM name for VAE key {key}")
        out["first_stage_model." + new] = value

    for key, value in pipe.text_encoder.state_dict().items():  # the original CLIP keys start text_model.
        out["cond_stage_model.transformer." + (key if key.startswith("text_model.") else "text_model." + key)] = value
    return out


