"""Memory-guided linear temporal attention (MEMO's motion module).

Each spatial location attends over the frames of the current clip with *linear* attention
(softmax feature maps, no F x F matrix) and additionally reads a decayed summary of every past
motion frame of the audio track from a `MotionMemory`. Numerics follow the released model
exactly (docs/architecture.md#motion-module, #linear-attention, #memory-decay,
#motion-module-inputs):

- queries are softmaxed over the head dim and then scaled by `head_dim**-0.5`; keys are
  softmaxed over the frame axis (current and motion frames separately);
- motion frame `i` of `P` is weighted by `decay**(P-1-i)` on keys *and* values, so it enters
  `KV` with `decay**(2(P-1-i))` and `Z` with `decay**(P-1-i)`;
- stored memory ages by `decay**P` per update and by one more `decay` when read;
- the sinusoidal position code is added to the current frames only.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from diffusers.models.attention import FeedForward
from torch import nn

from .clip_constants import name_slots
from .motion_memory import MotionMemory

MemoryUpdate = Literal["reset", "append", "read"]
"""How a denoising call treats the motion memory:
`reset` starts it afresh from this clip's motion frames (first clip of an audio track),
`append` ages it and adds this clip's motion frames (first step of a later clip),
`read` only uses it (remaining steps)."""


def memory_update_from_flags(is_new_audio: bool, update_past_memory: bool) -> MemoryUpdate:
    """Translate the official pipeline's two flags."""
    if is_new_audio:
        return "reset"
    return "append" if update_past_memory else "read"


class SinusoidalPositions(nn.Module):
    """Fixed sin/cos table, stored as the persistent buffer `pe` `(1, max_len, dim)` as released."""

    def __init__(self, dim: int, max_len: int):
        super().__init__()
        position = torch.arange(max_len).unsqueeze(1)
        frequency = torch.exp(torch.arange(0, dim, 2) * (-math.log(10000.0) / dim))
        pe = torch.zeros(1, max_len, dim)
        pe[0, :, 0::2] = torch.sin(position * frequency)
        pe[0, :, 1::2] = torch.cos(position * frequency)
        self.register_buffer("pe", pe)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`x`: `(b, frames, ...,  dim)`: frame `i` gets row `i` of the table."""
        if x.shape[1] > self.pe.shape[1]:
            raise ValueError(
                f"clip of {x.shape[1]} frames is longer than the model's temporal position table "
                f"({self.pe.shape[1]}, temporal_position_encoding_max_len)"
            )
        pe = self.pe[0, : x.shape[1]]
        return x + pe.view(1, x.shape[1], *([1] * (x.dim() - 3)), pe.shape[-1])


class MemoryLinearAttention(nn.Module):
    """Linear attention over frames plus the motion memory; one memory slot per layer.

    `slot_name` (set by `name_slots` from its module path) names this layer's memory slot.
    """

    def __init__(self, query_dim: int, heads: int, dim_head: int, bias: bool = False,
                 temporal_position_encoding: bool = False, temporal_position_encoding_max_len: int = 24):
        super().__init__()
        inner = heads * dim_head
        self.heads, self.head_dim = heads, dim_head
        self.to_q = nn.Linear(query_dim, inner, bias=bias)
        self.to_k = nn.Linear(query_dim, inner, bias=bias)
        self.to_v = nn.Linear(query_dim, inner, bias=bias)
        self.to_out = nn.ModuleList([nn.Linear(inner, query_dim), nn.Dropout(0.0)])
        self.pos_encoder = (
            SinusoidalPositions(query_dim, temporal_position_encoding_max_len) if temporal_position_encoding else None
        )
        self.slot_name = ""

    def _heads(self, projected: torch.Tensor, batch: int, frames: int, acc: torch.dtype) -> torch.Tensor:
        """`((b f), tokens, inner)` -> `(b, f, tokens, heads, head_dim)` in `acc` (a view when no cast)."""
        return projected.view(batch, frames, projected.shape[1], self.heads, self.head_dim).to(acc)

    def _write_memory(self, motion: torch.Tensor, batch: int, memory: MotionMemory, update: MemoryUpdate) -> None:
        """`motion`: `((b P), tokens, dim)` normalised motion tokens."""
        num_motion = motion.shape[0] // batch
        acc = memory.dtype or motion.dtype
        keys = torch.softmax(self._heads(self.to_k(motion), batch, num_motion, acc), dim=1)
        values = self._heads(self.to_v(motion), batch, num_motion, acc)
        weights = memory.decay ** torch.arange(num_motion - 1, -1, -1, device=keys.device, dtype=keys.dtype)
        weights = weights.view(1, num_motion, 1, 1, 1)
        keys, values = keys * weights, values * weights
        kv_new = torch.einsum("bpthd,bpthe->bthde", keys, values).reshape(-1, self.head_dim, self.head_dim)
        z_new = keys.sum(dim=1).reshape(-1, 1, self.head_dim)
        if update == "reset":
            memory.forget(self.slot_name)
        memory.absorb(self.slot_name, kv_new, z_new, num_motion)

    def forward(self, hidden_states: torch.Tensor, motion_tokens: torch.Tensor | None, num_frames: int,
                memory: MotionMemory, update: MemoryUpdate) -> torch.Tensor:
        """`hidden_states`: `((b f), tokens, c)`; `motion_tokens`: `((b P), tokens, c)` (unused for `read`).

        Attention runs along the frame axis of every (copy, token) pair; the projections work on the
        folded rows as they come and the heads are views, so no frame/token transpose is needed.
        The memory is kept per `(b, token, head)` row, as `(b*tokens*heads, d, d)` and `(.., 1, d)`."""
        rows, tokens, channels = hidden_states.shape
        batch = rows // num_frames
        x = hidden_states
        if self.pos_encoder is not None:
            x = self.pos_encoder(x.view(batch, num_frames, tokens, channels)).view(rows, tokens, channels)
        if update != "read":
            self._write_memory(motion_tokens, batch, memory, update)

        acc = memory.dtype or x.dtype  # the linear attention's own precision (docs/architecture.md#precision)
        query = torch.softmax(self._heads(self.to_q(x), batch, num_frames, acc), dim=-1) * self.head_dim**-0.5
        key = torch.softmax(self._heads(self.to_k(x), batch, num_frames, acc), dim=1)
        value = self._heads(self.to_v(x), batch, num_frames, acc)
        kv_mem, z_mem = memory.read(self.slot_name, x.device)
        kv_mem = kv_mem.view(batch, tokens, self.heads, self.head_dim, self.head_dim).to(acc)
        z_mem = z_mem.view(batch, tokens, self.heads, self.head_dim).to(acc)
        # this clip's frames plus the memory aged by one frame, accumulated in place (no temporaries)
        kv = torch.einsum("bfthd,bfthe->bthde", key, value).add_(kv_mem, alpha=memory.decay)
        z = key.sum(dim=1).add_(z_mem, alpha=memory.decay)
        out = torch.einsum("bfthd,bthde->bfthe", query, kv) / torch.einsum("bfthd,bthd->bfth", query, z).clamp(min=1e-10).unsqueeze(-1)
        out = out.reshape(rows, tokens, self.heads * self.head_dim).to(x.dtype)
        return self.to_out[1](self.to_out[0](out))


class TemporalBlock(nn.Module):
    """Pre-norm memory attentions (one per `attention_block_types` entry) followed by a GEGLU FF."""

    def __init__(self, dim: int, heads: int, head_dim: int, num_attentions: int, **attention_kwargs):
        super().__init__()
        self.attention_blocks = nn.ModuleList(
            [MemoryLinearAttention(dim, heads, head_dim, **attention_kwargs) for _ in range(num_attentions)]
        )
        self.norms = nn.ModuleList([nn.LayerNorm(dim) for _ in range(num_attentions)])
        self.ff = FeedForward(dim, activation_fn="geglu")
        self.ff_norm = nn.LayerNorm(dim)

    def forward(self, x, motion, num_frames, memory, update):
        for attention, norm in zip(self.attention_blocks, self.norms):
            normed_motion = norm(motion) if update != "read" else None
            x = attention(norm(x), normed_motion, num_frames, memory, update) + x
        return self.ff(self.ff_norm(x)) + x


class TemporalTransformer(nn.Module):
    """GroupNorm(32) -> Linear in -> temporal blocks -> Linear out, with a residual around it all.

    Motion frames share the GroupNorm and input projection but are never updated by the blocks.
    """

    def __init__(self, in_channels: int, heads: int, head_dim: int, num_layers: int, num_attentions: int, **attention_kwargs):
        super().__init__()
        inner = heads * head_dim
        self.norm = nn.GroupNorm(32, in_channels, eps=1e-6)
        self.proj_in = nn.Linear(in_channels, inner)
        self.transformer_blocks = nn.ModuleList(
            [TemporalBlock(inner, heads, head_dim, num_attentions, **attention_kwargs) for _ in range(num_layers)]
        )
        self.proj_out = nn.Linear(inner, in_channels)

    def _tokens(self, frames: torch.Tensor) -> torch.Tensor:
        """`(n, c, h, w)` frames -> `(n, (h w), inner)` after GroupNorm and the input projection."""
        n, c, h, w = frames.shape
        return self.proj_in(self.norm(frames).permute(0, 2, 3, 1).reshape(n, h * w, c))

    def forward(self, frames: torch.Tensor, motion_frames: torch.Tensor | None, num_frames: int,
                memory: MotionMemory, update: MemoryUpdate) -> torch.Tensor:
        n, c, h, w = frames.shape
        x = self._tokens(frames)
        motion = self._tokens(motion_frames) if update != "read" else None
        for block in self.transformer_blocks:
            x = block(x, motion, num_frames, memory, update)
        return frames + self.proj_out(x).reshape(n, h, w, c).permute(0, 3, 1, 2)


class MotionModule(nn.Module):
    """The released `MemoryLinearAttnTemporalModule`; keys live under `temporal_transformer.`."""

    def __init__(self, in_channels: int, num_attention_heads: int = 8, num_transformer_block: int = 2,
                 attention_block_types=("Temporal_Self", "Temporal_Self"), temporal_position_encoding: bool = False,
                 temporal_position_encoding_max_len: int = 24, temporal_attention_dim_div: int = 1,
                 zero_initialize: bool = True):
        super().__init__()
        for kind in attention_block_types:
            if kind != "Temporal_Self":
                raise ValueError(
                    f"motion module attention type '{kind}' is not supported: released MEMO models use 'Temporal_Self' only"
                )
        if in_channels % 32:
            raise ValueError(f"motion module width {in_channels} must be divisible by 32 (its GroupNorm has 32 groups)")
        head_dim = in_channels // num_attention_heads // temporal_attention_dim_div
        self.temporal_transformer = TemporalTransformer(
            in_channels, num_attention_heads, head_dim, num_transformer_block, len(attention_block_types),
            temporal_position_encoding=temporal_position_encoding,
            temporal_position_encoding_max_len=temporal_position_encoding_max_len,
        )
        if zero_initialize:
            nn.init.zeros_(self.temporal_transformer.proj_out.weight)
            nn.init.zeros_(self.temporal_transformer.proj_out.bias)
        name_slots(self)

    def forward(self, frames: torch.Tensor, motion_frames: torch.Tensor | None, num_frames: int,
                memory: MotionMemory, update: MemoryUpdate) -> torch.Tensor:
        """`frames`: the clip folded as `((b f), c, h, w)`; `motion_frames`: the reference-net
        features of the past frames `((b P), c, h, w)` (only read when the memory is written)."""
        return self.temporal_transformer(frames, motion_frames, num_frames, memory, update)
