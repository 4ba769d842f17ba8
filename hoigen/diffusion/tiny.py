"""A tiny Stable-Diffusion + ControlNet pipeline built from configs, offline, with seeded random weights.

It stands in for Stable Diffusion 1.5 + a trained HOI ControlNet where no model hub is reachable:
same classes, same call path, same condition tensor, a few hundred thousand parameters. Its images
are noise-like until it is trained (``hoigen.diffusion.train``); every output made with it is
labelled ``tiny-random`` (see ``hoigen.diffusion.pipeline.load_pipeline``).

The tokenizer is a byte-level CLIP BPE with no merges (one token per UTF-8 byte, 514 tokens), built
in code, so prompts are truncated at about 75 characters.
"""

from __future__ import annotations

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

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
MAX_TOKENS = 77
HIDDEN = 32
# VAE levels: each level past the first halves the resolution (2**3 = 8, as in Stable Diffusion).
VAE_CHANNELS = (32, 32, 64, 64)
# The ControlNet's condition encoder must downsample the condition image to the latent resolution.
CONDITION_EMBEDDING_CHANNELS = (16, 16, 32, 32)


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


def build_tiny_pipeline(seed: int = 0) -> StableDiffusionControlNetPipeline:
    """Build the tiny pipeline; the same seed gives the same weights (global RNG state is left untouched)."""
    tokenizer = build_tiny_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            sample_size=32,
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
            block_out_channels=VAE_CHANNELS,
            down_block_types=("DownEncoderBlock2D",) * len(VAE_CHANNELS),
            up_block_types=("UpDecoderBlock2D",) * len(VAE_CHANNELS),
            latent_channels=4,
            layers_per_block=1,
            norm_num_groups=32,
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
            conditioning_embedding_out_channels=CONDITION_EMBEDDING_CHANNELS,
        )
    scheduler = DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
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
    pipe.hoigen_info = {"model": TINY_MODEL_NAME, "kind": TINY_MODEL_NAME, "seed": seed}
    return pipe
