"""Spatial transformer of the diffusion net: self-attention that also looks at the reference
image's features, then cross-attention to the face tokens, then a GEGLU feed-forward.

Reproduces two behaviours of the released model that look accidental but shape its outputs
(docs/architecture.md#spatial-attention, #uncond-without-reference, #reference-tiling):

- the reference features `(b, tokens, c)` are *tiled* over the `(b f)` rows with
  `.repeat(frames, 1, 1)`, so row `r` reads reference copy `r % b`;
- with classifier-free guidance the unconditional half of the rows attends to itself only
  (no reference tokens).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.models.attention import FeedForward
from diffusers.models.attention_processor import Attention, XFormersAttnProcessor
from torch import nn

from .clip_constants import ClipConstants, clip_constant


def cfg_self_only_rows(rows: int, uc_mask: torch.Tensor | None) -> torch.Tensor | None:
    """The official rule for the uncond mask: used as given when it has one entry per row,
    otherwise rebuilt as "first half of the rows" (the CFG uncond copy)."""
    if uc_mask is None:
        return None
    if uc_mask.numel() == rows:
        return uc_mask.bool()
    mask = torch.zeros(rows, dtype=torch.bool, device=uc_mask.device)
    mask[: rows // 2] = True
    return mask


def tile_reference(reference: torch.Tensor, num_frames: int) -> torch.Tensor:
    """`(b, tokens, c)` -> `((b f), tokens, c)` by tiling: row `r` gets copy `r % b` (docs/architecture.md#reference-tiling)."""
    return reference.repeat(num_frames, 1, 1)


def attention_kernel(attn: Attention, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """Multi-head attention of already projected `(rows, tokens, heads * head_dim)` tensors, with
    the kernel the layer's processor uses (xformers or PyTorch SDPA), merged back to the input layout."""
    rows, heads = query.shape[0], attn.heads
    split = lambda t: t.reshape(rows, t.shape[1], heads, -1).transpose(1, 2)  # noqa: E731
    if isinstance(attn.processor, XFormersAttnProcessor):
        import xformers.ops

        fold = lambda t: split(t).reshape(rows * heads, t.shape[1], -1)  # noqa: E731
        out = xformers.ops.memory_efficient_attention(fold(query), fold(key), fold(value), scale=attn.scale)
        out = out.reshape(rows, heads, query.shape[1], -1)
    else:
        out = F.scaled_dot_product_attention(split(query), split(key), split(value), dropout_p=0.0, is_causal=False)
    out = out.transpose(1, 2).reshape(rows, query.shape[1], -1).to(query.dtype)
    return attn.to_out[1](attn.to_out[0](out))


class ReferenceAttentionBlock(nn.Module):
    def __init__(self, dim: int, heads: int, head_dim: int, cross_attention_dim: int, upcast_attention: bool = False):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = Attention(query_dim=dim, heads=heads, dim_head=head_dim, bias=False, upcast_attention=upcast_attention)
        self.norm2 = nn.LayerNorm(dim)
        self.attn2 = Attention(query_dim=dim, cross_attention_dim=cross_attention_dim, heads=heads, dim_head=head_dim,
                               bias=False, upcast_attention=upcast_attention)
        self.norm3 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim, activation_fn="geglu")
        self.slot_name = ""

    def _projections(self, reference: torch.Tensor, face_tokens: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Key/value projections of the reference-image tokens `(b, tokens, dim)` (self-attention)
        and of the face tokens `(b, n, c)` (cross-attention), per CFG copy, untiled."""
        return (self.attn1.to_k(reference), self.attn1.to_v(reference),
                self.attn2.to_k(face_tokens), self.attn2.to_v(face_tokens))

    def forward(self, x: torch.Tensor, reference: torch.Tensor, face_tokens: torch.Tensor, num_frames: int,
                self_only_rows: torch.Tensor | None, constants: ClipConstants | None = None) -> torch.Tensor:
        """`x`: `((b f), tokens, dim)`; `reference`: `(b, tokens, dim)`; `face_tokens`: `((b f), n, c)`;
        `self_only_rows`: bool per row that must not see the reference, or None; `constants`: the
        clip's `ClipConstants` (the reference and face projections are then computed once per clip).
        `face_tokens` may also be `(b, n, c)` when `constants` is given."""
        normed = self.norm1(x)
        if constants is not None:
            face_rows = face_tokens[::num_frames] if face_tokens.shape[0] == x.shape[0] else face_tokens
            ref_key, ref_value, face_key, face_value = clip_constant(
                constants, self.slot_name, lambda: self._projections(reference, face_rows))
            x = self._cached_self_attention(normed, ref_key, ref_value, num_frames, self_only_rows) + x
            rows_per_copy = x.shape[0] // face_key.shape[0]
            query = self.attn2.to_q(self.norm2(x))
            x = attention_kernel(self.attn2, query, face_key.repeat_interleave(rows_per_copy, dim=0),
                                 face_value.repeat_interleave(rows_per_copy, dim=0)) + x
            return self.ff(self.norm3(x)) + x
        context = torch.cat([normed, tile_reference(reference, num_frames)], dim=1)
        if self_only_rows is None or not bool(self_only_rows.any()):
            x = self.attn1(normed, encoder_hidden_states=context) + x
        else:
            out = torch.empty_like(x)
            ref_rows = ~self_only_rows
            if bool(ref_rows.any()):
                out[ref_rows] = self.attn1(normed[ref_rows], encoder_hidden_states=context[ref_rows])
            out[self_only_rows] = self.attn1(normed[self_only_rows])
            x = out + x
        x = self.attn2(self.norm2(x), encoder_hidden_states=face_tokens) + x
        return self.ff(self.norm3(x)) + x

    def _cached_self_attention(self, normed, ref_key, ref_value, num_frames, self_only_rows):
        """Self-attention over `[own tokens, reference tokens]` with the reference projections given
        (tiled over the rows exactly as the reference tokens are, by `tile_reference`)."""
        attn = self.attn1
        query, key, value = attn.to_q(normed), attn.to_k(normed), attn.to_v(normed)
        rows = torch.arange(normed.shape[0], device=normed.device)
        ref_rows = rows if self_only_rows is None else rows[~self_only_rows]
        out = torch.empty_like(query) if self_only_rows is not None else None
        if ref_rows.numel():
            keys = torch.cat([key[ref_rows], tile_reference(ref_key, num_frames)[ref_rows]], dim=1)
            values = torch.cat([value[ref_rows], tile_reference(ref_value, num_frames)[ref_rows]], dim=1)
            seen = attention_kernel(attn, query[ref_rows], keys, values)
            if out is None:
                return seen
            out[ref_rows] = seen
        self_rows = rows[self_only_rows]
        out[self_rows] = attention_kernel(attn, query[self_rows], key[self_rows], value[self_rows])
        return out


class SpatialTransformer(nn.Module):
    """GroupNorm -> 1x1 projection -> reference-attention blocks -> projection, plus residual,
    applied to every frame of a clip."""

    def __init__(self, heads: int, head_dim: int, in_channels: int, cross_attention_dim: int, norm_num_groups: int = 32,
                 num_layers: int = 1, use_linear_projection: bool = False, upcast_attention: bool = False):
        super().__init__()
        inner = heads * head_dim
        self.use_linear_projection = use_linear_projection
        self.norm, self.proj_in, self.proj_out = token_projections(in_channels, inner, norm_num_groups, use_linear_projection)
        self.transformer_blocks = nn.ModuleList(
            [ReferenceAttentionBlock(inner, heads, head_dim, cross_attention_dim, upcast_attention) for _ in range(num_layers)]
        )

    def forward(self, frames: torch.Tensor, reference: torch.Tensor, face_tokens: torch.Tensor, num_frames: int,
                uc_mask: torch.Tensor | None = None, constants: ClipConstants | None = None) -> torch.Tensor:
        """`frames`: the clip folded as `((b f), c, h, w)`; `reference`: `(b, h*w, c)` reference-image
        tokens; `face_tokens`: `(b, n, c)` or already one row per frame."""
        rows, c, h, w = frames.shape
        if face_tokens.shape[0] != rows and constants is None:
            face_tokens = face_tokens.repeat_interleave(num_frames, dim=0)
        x = to_tokens(self.norm(frames), self.proj_in, self.use_linear_projection)
        self_only = cfg_self_only_rows(rows, uc_mask)
        for block in self.transformer_blocks:
            x = block(x, reference, face_tokens, num_frames, self_only, constants)
        return frames + from_tokens(x, self.proj_out, self.use_linear_projection, h, w)


def token_projections(in_channels: int, inner: int, groups: int, linear: bool):
    """GroupNorm and the in/out projections around a transformer (1x1 convs, or Linear layers)."""
    norm = nn.GroupNorm(groups, in_channels, eps=1e-6)
    if linear:
        return norm, nn.Linear(in_channels, inner), nn.Linear(inner, in_channels)
    return norm, nn.Conv2d(in_channels, inner, 1), nn.Conv2d(inner, in_channels, 1)


def to_tokens(frames: torch.Tensor, proj_in: nn.Module, linear: bool) -> torch.Tensor:
    """`(n, c, h, w)` -> `(n, h*w, inner)` through a 1x1 conv or a Linear, as configured."""
    n, c, h, w = frames.shape
    if linear:
        return proj_in(frames.permute(0, 2, 3, 1).reshape(n, h * w, c))
    frames = proj_in(frames)
    return frames.permute(0, 2, 3, 1).reshape(n, h * w, frames.shape[1])


def from_tokens(tokens: torch.Tensor, proj_out: nn.Module, linear: bool, h: int, w: int) -> torch.Tensor:
    n, _, inner = tokens.shape
    if linear:
        tokens = proj_out(tokens)
        return tokens.reshape(n, h, w, tokens.shape[-1]).permute(0, 3, 1, 2)
    return proj_out(tokens.reshape(n, h, w, inner).permute(0, 3, 1, 2))
