"""Emotion-aware audio attention of the diffusion net (Emo-AdaNorm + joint video/audio attention).

Video tokens of a frame and the audio tokens of the same frame are each self-attended, then
attended *jointly* (one attention over the concatenation, SD3 style), with every pre-norm
modulated by the clip's emotion label. Behaviours kept from the released model
(docs/architecture.md#audio-attention, #emotion-conditioning, #audio-module-width,
#double-audio-skip, #truncated-final-blocks):

- Emo-AdaNorm: `LN(x) * (1 + scale) + shift` with `[shift, scale] = Linear(SiLU(embed(label)))`;
  the embedding table has one extra row (index 9) that is the CFG "no emotion" label;
- the module adds its input audio tokens once more on top of the block's own residuals;
- the last audio module of the net has no audio output path at all.
"""

from __future__ import annotations

import torch
from diffusers.models.attention import FeedForward
from diffusers.models.attention_processor import Attention, JointAttnProcessor2_0
from diffusers.models.embeddings import LabelEmbedding
from torch import nn

from ..audio.emotions import NUM_EMOTION_CLASSES
from .clip_constants import ClipConstants, clip_constant
from .spatial_attention import from_tokens, to_tokens, token_projections



class EmotionAdaLayerNorm(nn.Module):
    def __init__(self, dim: int, num_classes: int = NUM_EMOTION_CLASSES, dropout_prob: float = 0.3, eps: float = 1e-5):
        super().__init__()
        self.class_embedder = LabelEmbedding(num_classes, dim, dropout_prob)
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=eps)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))
        self.slot_name = ""

    def modulation(self, emotion: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`(shift, scale)`, one row per label: depends on the emotion only, not on the timestep."""
        return self.adaLN_modulation(self.class_embedder.embedding_table(emotion)).chunk(2, dim=1)

    def forward(self, x: torch.Tensor, emotion: torch.Tensor, constants: ClipConstants | None = None) -> torch.Tensor:
        """`x`: `(rows, tokens, dim)`; `emotion`: one label per sample (rows split evenly) or one for all."""
        shift, scale = clip_constant(constants, self.slot_name, lambda: self.modulation(emotion))
        if emotion.numel() > 1:
            rows_per_label = x.shape[0] // emotion.numel()
            shift, scale = shift.repeat_interleave(rows_per_label, dim=0), scale.repeat_interleave(rows_per_label, dim=0)
        return self.norm(x) * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class JointAudioBlock(nn.Module):
    def __init__(self, dim: int, heads: int, head_dim: int, audio_dim: int, emo_drop_rate: float = 0.3,
                 is_final_block: bool = False, upcast_attention: bool = False):
        super().__init__()
        self.is_final_block = is_final_block
        attention = dict(heads=heads, dim_head=head_dim, bias=False, upcast_attention=upcast_attention)
        self.norm1 = EmotionAdaLayerNorm(dim, dropout_prob=emo_drop_rate)
        self.attn1 = Attention(query_dim=dim, **attention)
        self.audio_norm1 = EmotionAdaLayerNorm(audio_dim, dropout_prob=emo_drop_rate)
        self.audio_attn1 = Attention(query_dim=audio_dim, **attention)
        self.norm2 = EmotionAdaLayerNorm(dim, dropout_prob=emo_drop_rate)
        self.audio_norm2 = EmotionAdaLayerNorm(audio_dim, dropout_prob=emo_drop_rate)
        self.attn2 = Attention(
            query_dim=dim, cross_attention_dim=dim, added_kv_proj_dim=audio_dim, out_dim=dim,
            context_pre_only=is_final_block, processor=JointAttnProcessor2_0(), **attention,
        )
        if not is_final_block:  # audio output projection back to the audio width (set here: older diffusers size it to `dim`)
            self.attn2.to_add_out = nn.Linear(self.attn2.inner_dim, audio_dim)
        self.norm3 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim, activation_fn="geglu")
        if not is_final_block:
            self.audio_norm3 = nn.LayerNorm(audio_dim)
            self.audio_ff = FeedForward(audio_dim, activation_fn="geglu")

    def forward(self, x: torch.Tensor, audio: torch.Tensor, emotion: torch.Tensor, constants: ClipConstants | None = None):
        """`x`: `((b f), tokens, dim)`, `audio`: `((b f), audio_tokens, audio_dim)` -> `(x, audio or None)`."""
        x = self.attn1(self.norm1(x, emotion, constants)) + x
        audio = self.audio_attn1(self.audio_norm1(audio, emotion, constants)) + audio
        joint_x, joint_audio = self.attn2(self.norm2(x, emotion, constants),
                                          encoder_hidden_states=self.audio_norm2(audio, emotion, constants))
        x = joint_x + x
        x = self.ff(self.norm3(x)) + x
        if self.is_final_block:
            return x, None
        audio = joint_audio + audio
        return x, self.audio_ff(self.audio_norm3(audio)) + audio


class AudioModule(nn.Module):
    """GroupNorm -> 1x1 projection to `heads * head_dim` (may differ from `in_channels`) ->
    joint audio blocks -> projection back, plus residual, over every frame of a clip."""

    def __init__(self, heads: int, head_dim: int, in_channels: int, audio_dim: int, norm_num_groups: int = 32,
                 num_layers: int = 1, use_linear_projection: bool = False, emo_drop_rate: float = 0.3,
                 is_final_block: bool = False, upcast_attention: bool = False):
        super().__init__()
        inner = heads * head_dim
        self.is_final_block = is_final_block
        self.use_linear_projection = use_linear_projection
        self.norm, self.proj_in, self.proj_out = token_projections(in_channels, inner, norm_num_groups, use_linear_projection)
        self.transformer_blocks = nn.ModuleList([
            JointAudioBlock(inner, heads, head_dim, audio_dim, emo_drop_rate, is_final_block and i == num_layers - 1, upcast_attention)
            for i in range(num_layers)
        ])

    def forward(self, frames: torch.Tensor, audio: torch.Tensor, emotion: torch.Tensor,
                constants: ClipConstants | None = None):
        """`frames`: the clip folded as `((b f), c, h, w)`; `audio`: `(b, f, tokens, dim)` or
        `((b f), tokens, dim)` -> `(frames, audio ((b f), tokens, dim) or None)`."""
        rows, c, h, w = frames.shape
        if audio.dim() == 4:
            audio = audio.reshape(-1, *audio.shape[2:])
        audio_in = audio
        x = to_tokens(self.norm(frames), self.proj_in, self.use_linear_projection)
        for block in self.transformer_blocks:
            x, audio = block(x, audio, emotion, constants)
        out = frames + from_tokens(x, self.proj_out, self.use_linear_projection, h, w)
        return out, (None if self.is_final_block else audio + audio_in)
