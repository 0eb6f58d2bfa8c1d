"""MEMO's diffusion net: an SD1.5-shaped video UNet whose every level combines

  resnet (per frame) -> spatial reference attention -> emotion-aware audio attention -> motion memory attention

Frames are folded into the batch once on entry (`(b, c, f, h, w)` -> `((b f), c, h, w)`, copy-major)
and unfolded once on exit, as diffusers' `UNetMotionModel` does; every module sees folded frames
and the temporal ones get `num_frames`. Resnets, down/up-samplers and the time embedding are
diffusers' 2D blocks (the released model's "inflated" 3D blocks are exactly that). Parameter
names match the released `diffusion_net/` checkpoint. Reference features come from
`ReferenceNet` (once per clip); the motion memory is an explicit `MotionMemory` that `forward`
reads and, when asked, updates; values that are constant over a clip's steps go to an explicit
`ClipConstants` when one is passed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.resnet import Downsample2D, ResnetBlock2D
from diffusers.models.upsampling import Upsample2D
from torch import nn

from .audio_attention import AudioModule
from .clip_constants import ClipConstants, name_slots
from .motion_memory import MotionMemory
from .motion_module import MemoryUpdate, MotionModule
from .reference_features import ReferenceFeatures, motion_frames, reference_tokens
from .spatial_attention import SpatialTransformer


@dataclass
class Conditioning:
    """What every layer of one denoising call needs besides its hidden state and the audio tokens."""

    face_tokens: torch.Tensor  # (b, n, c)
    emotion: torch.Tensor  # one label per CFG copy, or one for all
    uc_mask: torch.Tensor | None  # given when the first CFG copy is the unconditional one
    batch: int
    num_frames: int
    memory: MotionMemory
    memory_update: MemoryUpdate
    constants: ClipConstants | None


class VideoLevel(nn.Module):
    """The modules of one resolution level; `DownLevel`, `MidLevel` and `UpLevel` run them.

    `widths[i]` is the width of layer `i` after its resnet, `audio_widths[i]` the width the released
    model sizes that layer's audio attention heads by (docs/architecture.md#audio-module-width).
    """

    def __init__(self, resnet_io: list[tuple[int, int]], widths: list[int], audio_widths: list[int], temb_channels: int,
                 cross_attention: bool, motion_kwargs: dict | None, heads: int = 8, cross_attention_dim: int = 768,
                 audio_attention_dim: int = 768, groups: int = 32, eps: float = 1e-5, act_fn: str = "silu",
                 time_scale_shift: str = "default", output_scale_factor: float = 1.0,
                 use_linear_projection: bool = False, upcast_attention: bool = False, emo_drop_rate: float = 0.3,
                 is_final_block: bool = False):
        super().__init__()
        self.resnets = nn.ModuleList([
            ResnetBlock2D(in_channels=i, out_channels=o, temb_channels=temb_channels, eps=eps, groups=groups,
                          time_embedding_norm=time_scale_shift, non_linearity=act_fn, output_scale_factor=output_scale_factor)
            for i, o in resnet_io
        ])
        self.has_cross_attention = cross_attention
        if cross_attention:
            # the config's `attention_head_dim` is the number of heads, as in SD1.5 (docs/architecture.md#level-layout)
            self.attentions = nn.ModuleList([
                SpatialTransformer(heads, width // heads, width, cross_attention_dim, groups,
                                   use_linear_projection=use_linear_projection, upcast_attention=upcast_attention)
                for width in widths
            ])
            self.audio_modules = nn.ModuleList([
                AudioModule(heads, audio_width // heads, width, audio_attention_dim, groups,
                            use_linear_projection=use_linear_projection, emo_drop_rate=emo_drop_rate,
                            is_final_block=is_final_block and i == len(widths) - 1, upcast_attention=upcast_attention)
                for i, (width, audio_width) in enumerate(zip(widths, audio_widths))
            ])
        self.motion_modules = (
            nn.ModuleList([MotionModule(width, **motion_kwargs) for width in widths]) if motion_kwargs is not None else None
        )

    def _attend(self, i: int, x: torch.Tensor, audio: torch.Tensor, reference: torch.Tensor, temb: torch.Tensor,
                cond: Conditioning) -> tuple[torch.Tensor, torch.Tensor]:
        """Spatial reference attention -> audio attention -> motion attention of layer `i`."""
        if self.has_cross_attention:
            spatial, audio_module = self.attentions[i], self.audio_modules[i]
            x = spatial(x, reference_tokens(reference, cond.batch), cond.face_tokens, cond.num_frames, cond.uc_mask,
                        constants=cond.constants)
            x, audio = audio_module(x, audio, cond.emotion, constants=cond.constants)
        if self.motion_modules is not None:
            # the motion frames are only read when the memory is written (the first step of a clip)
            motion = None
            if cond.memory_update != "read":
                motion = motion_frames(reference, cond.batch, x.shape[2], x.shape[3]).to(x.dtype)
            x = self.motion_modules[i](x, motion, cond.num_frames, cond.memory, cond.memory_update)
        return x, audio


class DownLevel(VideoLevel):
    def __init__(self, in_channels: int, out_channels: int, num_layers: int, add_downsample: bool,
                 downsample_padding: int = 1, **kwargs):
        resnet_io = [(in_channels if i == 0 else out_channels, out_channels) for i in range(num_layers)]
        # the first layer's audio heads are sized by the level's input width (docs/architecture.md#audio-module-width)
        audio_widths = [in_channels if i == 0 else out_channels for i in range(num_layers)]
        super().__init__(resnet_io, [out_channels] * num_layers, audio_widths, **kwargs)
        if add_downsample:
            self.downsamplers = nn.ModuleList(
                [Downsample2D(out_channels, use_conv=True, out_channels=out_channels, padding=downsample_padding, name="op")]
            )

    def forward(self, x, audio, temb, references: list[torch.Tensor], cond: Conditioning):
        """-> `(x, audio, skip outputs)`."""
        skips = []
        for i, resnet in enumerate(self.resnets):
            x, audio = self._attend(i, resnet(x, temb), audio, references[i], temb, cond)
            skips.append(x)
        if hasattr(self, "downsamplers"):
            x = self.downsamplers[0](x)
            skips.append(x)
        return x, audio, skips


class MidLevel(VideoLevel):
    """resnet, then per layer: spatial -> audio -> motion -> resnet."""

    def __init__(self, channels: int, num_layers: int, **kwargs):
        super().__init__([(channels, channels)] * (num_layers + 1), [channels] * num_layers, [channels] * num_layers, **kwargs)

    def forward(self, x, audio, temb, references: list[torch.Tensor], cond: Conditioning):
        x = self.resnets[0](x, temb)
        for i, resnet in enumerate(self.resnets[1:]):
            x, audio = self._attend(i, x, audio, references[i], temb, cond)
            x = resnet(x, temb)
        return x, audio


class UpLevel(VideoLevel):
    def __init__(self, in_channels: int, out_channels: int, prev_channels: int, skip_channels: list[int],
                 num_layers: int, add_upsample: bool, **kwargs):
        resnet_io = [((prev_channels if i == 0 else out_channels) + skip_channels[i], out_channels) for i in range(num_layers)]
        # every layer's audio heads are sized by the block's in_channels argument (docs/architecture.md#audio-module-width)
        super().__init__(resnet_io, [out_channels] * num_layers, [in_channels] * num_layers, **kwargs)
        if add_upsample:
            self.upsamplers = nn.ModuleList([Upsample2D(out_channels, use_conv=True, out_channels=out_channels)])

    def forward(self, x, audio, temb, references: list[torch.Tensor], cond: Conditioning, skips: list[torch.Tensor],
                upsample_size=None):
        """Consumes one skip tensor per layer from the end of `skips`."""
        for i, resnet in enumerate(self.resnets):
            x = resnet(torch.cat([x, skips.pop()], dim=1), temb)
            x, audio = self._attend(i, x, audio, references[i], temb, cond)
        if hasattr(self, "upsamplers"):
            x = self.upsamplers[0](x, upsample_size)
        return x, audio


RELEASE_LEVELS = 4


def up_level_resolution(i: int) -> int:
    """The downsampling factor the release assigns to up level `i` when deciding whether it gets
    motion modules: `2 ** (3 - i)`, i.e. the mirror image of down level `3 - i` of a four-level
    UNet (docs/architecture.md#level-layout)."""
    return 2 ** (RELEASE_LEVELS - 1 - i)


def check_motion_resolutions(levels: int, resolutions) -> None:
    """The release's up-level rule only mirrors the down levels for four levels; refuse a config
    where it would give a different set of motion modules than the mirrored down levels."""
    for i in range(levels):
        mirrored = 2 ** (levels - 1 - i) in resolutions
        if (up_level_resolution(i) in resolutions) != mirrored:
            raise ValueError(
                f"diffusion_net: with {levels} levels and motion_module_resolutions={list(resolutions)}, the released "
                f"model's up-level rule 2**(3-i) disagrees with the mirrored down level {levels - 1 - i}; released "
                f"MEMO models have {RELEASE_LEVELS} levels"
            )


class DiffusionNet(ModelMixin, ConfigMixin):
    """MEMO `diffusion_net` (released as `UNet3DConditionModel`). Config keys are the released ones."""

    config_name = "config.json"

    @register_to_config
    def __init__(self, sample_size=None, in_channels=8, out_channels=8, flip_sin_to_cos=True, freq_shift=0,
                 down_block_types=("CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "DownBlock3D"),
                 mid_block_type="UNetMidBlock3DCrossAttn",
                 up_block_types=("UpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D"),
                 only_cross_attention=False, block_out_channels=(320, 640, 1280, 1280), layers_per_block=2,
                 downsample_padding=1, mid_block_scale_factor=1, act_fn="silu", norm_num_groups=32, norm_eps=1e-5,
                 cross_attention_dim=1280, attention_head_dim=8, dual_cross_attention=False, use_linear_projection=False,
                 class_embed_type=None, num_class_embeds=None, upcast_attention=False, resnet_time_scale_shift="default",
                 use_inflated_groupnorm=False, motion_module_resolutions=(1, 2, 4, 8), motion_module_kwargs=None,
                 unet_use_cross_frame_attention=None, unet_use_temporal_attention=None, audio_attention_dim=768,
                 emo_drop_rate=0.3, center_input_sample=False):
        super().__init__()
        unsupported = {
            "use_inflated_groupnorm=False (GroupNorm across frames)": not use_inflated_groupnorm,
            "dual_cross_attention": dual_cross_attention,
            "unet_use_temporal_attention": bool(unet_use_temporal_attention),
            "class embeddings": class_embed_type is not None or num_class_embeds is not None,
            "only_cross_attention": bool(only_cross_attention),
            f"mid_block_type={mid_block_type}": mid_block_type != "UNetMidBlock3DCrossAttn",
        }
        bad = [name for name, flag in unsupported.items() if flag]
        if bad:
            raise ValueError(f"diffusion_net config uses options released MEMO models do not use: {', '.join(bad)}")
        levels = len(block_out_channels)
        check_motion_resolutions(levels, motion_module_resolutions)
        heads = [attention_head_dim] * levels if isinstance(attention_head_dim, int) else list(attention_head_dim)
        motion_kwargs = dict(motion_module_kwargs or {})
        temb_channels = block_out_channels[0] * 4
        common = dict(temb_channels=temb_channels, cross_attention_dim=cross_attention_dim,
                      audio_attention_dim=audio_attention_dim, groups=norm_num_groups, eps=norm_eps, act_fn=act_fn,
                      time_scale_shift=resnet_time_scale_shift, use_linear_projection=use_linear_projection,
                      upcast_attention=upcast_attention, emo_drop_rate=emo_drop_rate)

        self.conv_in = nn.Conv2d(in_channels, block_out_channels[0], kernel_size=3, padding=1)
        self.time_proj = Timesteps(block_out_channels[0], flip_sin_to_cos, freq_shift)
        self.time_embedding = TimestepEmbedding(block_out_channels[0], temb_channels)

        self.down_blocks = nn.ModuleList()
        channels = block_out_channels[0]
        for i, kind in enumerate(down_block_types):
            previous, channels = channels, block_out_channels[i]
            self.down_blocks.append(DownLevel(
                previous, channels, num_layers=layers_per_block, cross_attention=kind.startswith("CrossAttn"),
                motion_kwargs=motion_kwargs if 2**i in motion_module_resolutions else None, heads=heads[i],
                add_downsample=i < levels - 1, downsample_padding=downsample_padding, **common,
            ))
        self.mid_block = MidLevel(block_out_channels[-1], num_layers=1, cross_attention=True, motion_kwargs=motion_kwargs,
                                  heads=heads[-1], output_scale_factor=mid_block_scale_factor, **common)
        self.up_blocks = nn.ModuleList()
        reversed_channels, reversed_heads = list(reversed(block_out_channels)), list(reversed(heads))
        skip_widths = self._skip_widths(block_out_channels, layers_per_block)
        channels = reversed_channels[0]
        for i, kind in enumerate(up_block_types):
            previous, channels = channels, reversed_channels[i]
            skips = [skip_widths.pop() for _ in range(layers_per_block + 1)]
            self.up_blocks.append(UpLevel(
                reversed_channels[min(i + 1, levels - 1)], channels, previous, skips, num_layers=layers_per_block + 1,
                cross_attention=kind.startswith("CrossAttn"),
                motion_kwargs=motion_kwargs if up_level_resolution(i) in motion_module_resolutions else None,
                heads=reversed_heads[i], add_upsample=i < levels - 1, is_final_block=i == levels - 1, **common,
            ))
        self.conv_norm_out = nn.GroupNorm(norm_num_groups, block_out_channels[0], eps=norm_eps)
        self.conv_act = nn.SiLU()
        self.conv_out = nn.Conv2d(block_out_channels[0], out_channels, kernel_size=3, padding=1)
        name_slots(self)

    @staticmethod
    def _skip_widths(block_out_channels, layers_per_block) -> list[int]:
        """Channel widths of the skip tensors pushed on the way down, in push order."""
        widths = [block_out_channels[0]]
        for i, width in enumerate(block_out_channels):
            widths += [width] * layers_per_block
            if i < len(block_out_channels) - 1:
                widths.append(width)
        return widths

    def forward(self, sample: torch.Tensor, ref_features: ReferenceFeatures, timestep, encoder_hidden_states: torch.Tensor,
                audio_embedding: torch.Tensor, audio_emotion: torch.Tensor, memory: MotionMemory,
                memory_update: MemoryUpdate, uc_mask: torch.Tensor | None = None,
                constants: ClipConstants | None = None) -> torch.Tensor:
        """Predict the flow-matching velocity for `sample` `(b, 4, f, h, w)`.

        `ref_features`: `ReferenceNet` output for `[reference image, P motion frames]` of each CFG
        copy; `encoder_hidden_states`: face tokens `(b, n, c)`; `audio_embedding`: projected audio
        `(b, f, tokens, dim)`; `audio_emotion`: emotion label per CFG copy (`[9, m]`) or one label;
        `memory` is read and, for `memory_update` "reset"/"append", updated in place;
        `uc_mask`: given when the first half of the batch is the unconditional CFG copy;
        `constants`: this clip's `ClipConstants`, the same object for every step of the clip (None
        computes the per-clip values at every step).
        """
        if self.config.center_input_sample:
            sample = 2 * sample - 1.0
        batch, channels, frames, height, width = sample.shape
        timestep = torch.as_tensor(timestep, device=sample.device)
        # the input's dtype is the compute dtype (the first parameter's need not be: weights may be stored smaller)
        temb = self.time_embedding(self.time_proj(timestep.reshape(-1).expand(batch)).to(dtype=sample.dtype))
        temb = temb.repeat_interleave(frames, dim=0)
        cond = Conditioning(encoder_hidden_states, audio_emotion.to(sample.device).long(), uc_mask, batch, frames,
                            memory, memory_update, constants)

        x = self.conv_in(sample.transpose(1, 2).reshape(batch * frames, channels, height, width))
        audio = audio_embedding
        # like diffusers, pass explicit upsample sizes only when the latent is not divisible
        forward_sizes = any(s % 2 ** (len(self.up_blocks) - 1) for s in (height, width))
        skips = [x]
        for level, references in zip(self.down_blocks, ref_features.down):
            x, audio, outputs = level(x, audio, temb, references, cond)
            skips += outputs
        x, audio = self.mid_block(x, audio, temb, ref_features.mid, cond)
        for i, (level, references) in enumerate(zip(self.up_blocks, ref_features.up)):
            last = i == len(self.up_blocks) - 1
            upsample_size = skips[-len(level.resnets) - 1].shape[-2:] if forward_sizes and not last else None
            x, audio = level(x, audio, temb, references, cond, skips=skips, upsample_size=upsample_size)
        x = self.conv_out(self.conv_act(self.conv_norm_out(x)))
        return x.reshape(batch, frames, *x.shape[1:]).transpose(1, 2)
