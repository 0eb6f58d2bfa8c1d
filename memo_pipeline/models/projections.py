"""Conditioning projections: wav2vec windows -> audio tokens, ArcFace embedding -> face tokens.

Parameter names (`proj1..3`, `proj`, `norm`) follow the released checkpoints so their
safetensors load unchanged.
"""

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn


class AudioProjection(ModelMixin, ConfigMixin):
    """Per video frame: a window of `seq_len` frames x `blocks` wav2vec layers x `channels`
    is flattened and mapped by a 3-layer MLP to `context_tokens` tokens of width `output_dim`."""

    @register_to_config
    def __init__(self, seq_len=5, blocks=12, channels=768, intermediate_dim=512, output_dim=768, context_tokens=32):
        super().__init__()
        self.proj1 = nn.Linear(seq_len * blocks * channels, intermediate_dim)
        self.proj2 = nn.Linear(intermediate_dim, intermediate_dim)
        self.proj3 = nn.Linear(intermediate_dim, context_tokens * output_dim)
        self.norm = nn.LayerNorm(output_dim)

    def forward(self, audio_embeds: torch.Tensor) -> torch.Tensor:
        """`(batch, frames, seq_len, blocks, channels)` -> `(batch, frames, context_tokens, output_dim)`."""
        batch, frames = audio_embeds.shape[:2]
        x = audio_embeds.reshape(batch * frames, -1)
        x = torch.relu(self.proj1(x))
        x = torch.relu(self.proj2(x))
        tokens = self.proj3(x).reshape(batch * frames, self.config.context_tokens, self.config.output_dim)
        return self.norm(tokens).reshape(batch, frames, self.config.context_tokens, self.config.output_dim)


class ImageProjection(ModelMixin, ConfigMixin):
    """ArcFace identity embedding -> `clip_extra_context_tokens` face tokens for cross-attention."""

    @register_to_config
    def __init__(self, cross_attention_dim=768, clip_embeddings_dim=512, clip_extra_context_tokens=4):
        super().__init__()
        self.proj = nn.Linear(clip_embeddings_dim, clip_extra_context_tokens * cross_attention_dim)
        self.norm = nn.LayerNorm(cross_attention_dim)

    def forward(self, image_embeds: torch.Tensor) -> torch.Tensor:
        """`(batch, clip_embeddings_dim)` -> `(batch, tokens, cross_attention_dim)`."""
        tokens = self.proj(image_embeds).reshape(-1, self.config.clip_extra_context_tokens, self.config.cross_attention_dim)
        return self.norm(tokens)
