"""Consistent trajectory videos: self-attention to an anchor frame (HOIDiffusion section 4.4).

Frames painted one by one flicker: the same conditions and prompt give a different appearance in
every frame. The paper refactors the UNet's self-attention layers into attention over an anchor
frame and the current frame (the middle frame is the anchor): every frame's queries attend to the
keys and values of the anchor's tokens and of its own, so all frames borrow one appearance.

``AnchorFrameAttnProcessor`` does this for a batch that holds the ``frames`` frames of one
trajectory in order (classifier-free guidance doubles the batch to [unconditional frames,
conditional frames]; each half has its own anchor). ``anchor_attention(pipe, frames, anchor)``
installs it on the UNet's self-attention layers (``attn1``) for a block and restores the previous
processors afterwards. Cross-attention to the text is unchanged. A one-frame "video" takes the
plain attention path, so it equals ordinary synthesis bit for bit.

``trajectory_groups`` groups sample keys into trajectories seen by a fixed camera (same object,
grasp and view), ordered by frame; ``write_mp4`` writes a clip with OpenCV's ``mp4v`` codec, which
the headless OpenCV wheel carries.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from hoigen.data.schema import parse_key
from hoigen.errors import HoigenError


class AnchorFrameAttnProcessor:
    """Self-attention over (anchor frame tokens + own tokens) for a batch of ``frames``-frame groups."""

    def __init__(self, frames: int, anchor: int) -> None:
        if frames < 1 or not 0 <= anchor < frames:
            raise ValueError(f"anchor {anchor} must index one of {frames} frames")
        self.frames = int(frames)
        self.anchor = int(anchor)
        from diffusers.models.attention_processor import AttnProcessor2_0

        self.plain = AttnProcessor2_0()

    def __call__(
        self,
        attn: Any,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> torch.Tensor:
        cross = encoder_hidden_states is not None
        if cross or self.frames == 1 or hidden_states.ndim != 3 or attention_mask is not None:
            return self.plain(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
        batch, tokens, _ = hidden_states.shape
        if batch % self.frames:
            raise ValueError(f"a batch of {batch} is not whole {self.frames}-frame videos")
        groups = batch // self.frames
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        key = attn.to_k(hidden_states)
        value = attn.to_v(hidden_states)
        heads = attn.heads
        head_dim = key.shape[-1] // heads

        def with_anchor(x: torch.Tensor) -> torch.Tensor:
            # (groups * frames, tokens, C) -> (groups * frames, 2 * tokens, C): [anchor tokens, own tokens]
            x = x.view(groups, self.frames, tokens, -1)
            anchor = x[:, self.anchor : self.anchor + 1].expand(-1, self.frames, -1, -1)
            return torch.cat([anchor, x], dim=2).reshape(batch, 2 * tokens, -1)

        key, value = with_anchor(key), with_anchor(value)
        query = query.view(batch, -1, heads, head_dim).transpose(1, 2)
        key = key.view(batch, -1, heads, head_dim).transpose(1, 2)
        value = value.view(batch, -1, heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        out = F.scaled_dot_product_attention(query, key, value, dropout_p=0.0, is_causal=False)
        out = out.transpose(1, 2).reshape(batch, -1, heads * head_dim).to(query.dtype)
        out = attn.to_out[1](attn.to_out[0](out))
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


@contextmanager
def anchor_attention(pipe: Any, frames: int, anchor: int) -> Iterator[None]:
    """Inside the block, ``pipe.unet``'s self-attention attends to the anchor frame too."""
    unet = pipe.unet
    saved = dict(unet.attn_processors)
    video = AnchorFrameAttnProcessor(frames, anchor)
    unet.set_attn_processor(
        {name: video if name.endswith("attn1.processor") else proc for name, proc in saved.items()}
    )
    try:
        yield
    finally:
        unet.set_attn_processor(saved)


def anchor_index(frames: int, anchor: str | int = "middle") -> int:
    """The anchor's position among ``frames`` frames: middle (frames // 2), first, last or a number (clamped)."""
    if frames < 1:
        raise ValueError("a video needs at least one frame")
    if anchor == "middle":
        return frames // 2
    if anchor == "first":
        return 0
    if anchor == "last":
        return frames - 1
    try:
        return min(max(int(anchor), 0), frames - 1)
    except (TypeError, ValueError):
        raise HoigenError(f"--anchor must be middle, first, last or a frame number, got {anchor!r}") from None


def trajectory_id(key: str) -> str:
    """``mug-1_0002_005_01`` -> ``mug-1_0002_01``: object, grasp and view (the camera is fixed along it)."""
    parts = parse_key(key)
    view = parts.get("view", 0)
    return f"{parts['object']}_{parts['grasp']:04d}_{view:02d}"


def trajectory_groups(keys: Sequence[str]) -> list[list[int]]:
    """Indices of ``keys`` grouped by trajectory (first-seen order), each ordered by frame."""
    groups: dict[str, list[int]] = {}
    for i, key in enumerate(keys):
        groups.setdefault(trajectory_id(key), []).append(i)
    return [sorted(members, key=lambda i: parse_key(keys[i])["frame"]) for members in groups.values()]


def write_mp4(path: Path | str, frames: Sequence[np.ndarray], fps: int = 8) -> Path:
    """Write RGB uint8 frames as an mp4 (``mp4v``); written under a temporary name, then renamed."""
    path = Path(path)
    if not frames:
        raise ValueError("no frames to write")
    height, width = frames[0].shape[:2]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.stem}.tmp-{os.getpid()}.mp4")
    writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), float(fps), (width, height))
    if not writer.isOpened():
        raise HoigenError(f"{path}: OpenCV cannot write mp4 here (no mp4v encoder); the frames are in the shards")
    try:
        for frame in frames:
            writer.write(cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2BGR))
    finally:
        writer.release()
    os.replace(tmp, path)
    return path
