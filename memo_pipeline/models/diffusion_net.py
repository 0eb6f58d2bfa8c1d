"""MEMO's diffusion net: an SD1.5-shaped video UNet whose every level combines

  resnet (per frame) -> spatial reference attention -> emotion-aware audio attention -> motion memory attention

Resnets, down/up-samplers and the time embedding are diffusers' 2D blocks applied to every frame
(the released model's "inflated" 3D blocks are exactly that). Parameter names match the released
`diffusion_net/` checkpoint. Reference features come from `ReferenceNet` (once per clip); the
motion memory is an explicit `MotionMemory` that `forward` reads and, when asked, updates.
"""

from __future__ import annotations

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.resnet import Downsample2D, ResnetBlock2D, Upsample2D
from torch import nn

from .audio_attention import AudioModule
from .motion_memory import MotionMemory
from .motion_module import MemoryUpdate, MotionModule, name_memory_slots
from .spatial_attention import SpatialTransformer


def _per_frame(module: nn.Module, video: torch.Tensor, *args) -> torch.Tensor:
    """Apply a 2D module to every frame of `(b, c, f, h, w)`."""
    b, c, f, h, w = video.shape
    out = module(video.transpose(1, 2).reshape(b * f, c, h, w), *args)
    return out.reshape(b, f, *out.shape[1:]).transpose(1, 2)


def _split_reference(feature: torch.Tensor, batch: int, height: int, width: int):
    """Reference-net feature of one layer -> (reference image tokens `(b, hw, c)` or None,
    motion-frame features `(b, c, P, h, w)`). The reference batch is copy-major: `(b (1+P))`."""
    if feature.dim() == 3:  # transformer norm1 output ((b f), hw, c)
        tokens = feature.reshape(batch, -1, height * width, feature.shape[-1])
        motion = tokens[:, 1:].reshape(batch, -1, height, width, feature.shape[-1]).permute(0, 4, 1, 2, 3)
        return tokens[:, 0], motion
    maps = feature.reshape(batch, -1, *feature.shape[1:])  # resnet output ((b f), c, h, w)
    return None, maps[:, 1:].transpose(1, 2)


class VideoLevel(nn.Module):
    """One resolution level (down, mid or up) of the video UNet."""

    def __init__(self, kind: str, in_channels: int, out_channels: int, temb_channels: int, num_layers: int,
                 cross_attention: bool, motion_kwargs: dict | None, skip_channels: list[int] | None = None,
                 prev_channels: int | None = None, heads: int = 8, cross_attention_dim: int = 768,
                 audio_attention_dim: int = 768, groups: int = 32, eps: float = 1e-5, act_fn: str = "silu",
                 time_scale_shift: str = "default", output_scale_factor: float = 1.0, add_downsample: bool = False,
                 add_upsample: bool = False, downsample_padding: int = 1, use_linear_projection: bool = False,
                 upcast_attention: bool = False, emo_drop_rate: float = 0.3, is_final_block: bool = False):
        super().__init__()
        self.kind = kind
        resnet = dict(temb_channels=temb_channels, eps=eps, groups=groups, time_embedding_norm=time_scale_shift,
                      non_linearity=act_fn, output_scale_factor=output_scale_factor)
        if kind == "mid":
            resnet_io = [(in_channels, in_channels)] * (num_layers + 1)
            widths = [in_channels] * num_layers
            audio_widths = [in_channels] * num_layers
        elif kind == "down":
            resnet_io = [(in_channels if i == 0 else out_channels, out_channels) for i in range(num_layers)]
            widths = [out_channels] * num_layers
            audio_widths = [in_channels if i == 0 else out_channels for i in range(num_layers)]  # quirk Q6
        else:
            resnet_io = [((prev_channels if i == 0 else out_channels) + skip_channels[i], out_channels) for i in range(num_layers)]
            widths = [out_channels] * num_layers
            audio_widths = [in_channels] * num_layers  # quirk Q6: the block's in_channels argument
        self.resnets = nn.ModuleList([ResnetBlock2D(in_channels=i, out_channels=o, **resnet) for i, o in resnet_io])
        self.has_cross_attention = cross_attention
        if cross_attention:
            self.attentions = nn.ModuleList([
                SpatialTransformer(heads, width // heads, width, cross_attention_dim, groups,
                                   use_linear_projection=use_linear_projection, upcast_attention=upcast_attention)
                for width in widths
            ])
            self.audio_modules = nn.ModuleList([
                AudioModule(heads, audio_width // heads, width, audio_attention_dim, groups,
                            use_linear_projection=use_linear_projection, emo_drop_rate=emo_drop_rate,
                            is_final_block=is_final_block and i == num_layers - 1, upcast_attention=upcast_attention)
                for i, (width, audio_width) in enumerate(zip(widths, audio_widths))
            ])
        self.motion_modules = (
            nn.ModuleList([MotionModule(width, **motion_kwargs) for width in widths]) if motion_kwargs is not None else None
        )
        if add_downsample:
            self.downsamplers = nn.ModuleList(
                [Downsample2D(out_channels, use_conv=True, out_channels=out_channels, padding=downsample_padding, name="op")]
            )
        if add_upsample:
            self.upsamplers = nn.ModuleList([Upsample2D(out_channels, use_conv=True, out_channels=out_channels)])

    def _resnet(self, i, x, temb):
        return _per_frame(self.resnets[i], x, temb.repeat_interleave(x.shape[2], dim=0))

    def _layer(self, i, x, temb, reference, ctx):
        """Layer `i`: resnet -> spatial -> audio -> motion (mid level: spatial -> audio -> motion ->
        resnet, after its leading resnet). Updates `ctx["audio"]`."""
        if self.kind != "mid":
            x = self._resnet(i, x, temb)
        ref_tokens, motion_frames = _split_reference(reference, x.shape[0], x.shape[3], x.shape[4])
        if self.has_cross_attention:
            x = self.attentions[i](x, ref_tokens, ctx["face_tokens"], ctx["uc_mask"])
            x, ctx["audio"] = self.audio_modules[i](x, ctx["audio"], ctx["emotion"])
        if self.motion_modules is not None:
            x = self.motion_modules[i](x, motion_frames.to(x.dtype), ctx["memory"], ctx["memory_update"])
        return self._resnet(i + 1, x, temb) if self.kind == "mid" else x

    def forward(self, x, temb, references, ctx, skips=None, upsample_size=None):
        """`references[i]` is the reference feature of layer `i` (the inner per-transformer list
        already resolved). Down levels return `(x, skip outputs)`; the others return `x`."""
        if self.kind == "mid":
            x = self._resnet(0, x, temb)
            for i in range(len(self.resnets) - 1):
                x = self._layer(i, x, temb, references[i], ctx)
            return x
        outputs = []
        for i in range(len(self.resnets)):
            if self.kind == "up":
                x = torch.cat([x, skips.pop()], dim=1)
            x = self._layer(i, x, temb, references[i], ctx)
            outputs.append(x)
        if self.kind == "down":
            if hasattr(self, "downsamplers"):
                x = _per_frame(self.downsamplers[0], x)
                outputs.append(x)
            return x, outputs
        if hasattr(self, "upsamplers"):
            x = _per_frame(self.upsamplers[0], x, upsample_size)
        return x


def _first_of_each(section: list) -> list:
    """CrossAttn levels hold `[layer][transformer block]`: keep the (only) block of each layer."""
    return [layer[0] if isinstance(layer, (list, tuple)) else layer for layer in section]


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
        heads = [attention_head_dim] * len(down_block_types) if isinstance(attention_head_dim, int) else list(attention_head_dim)
        motion_kwargs = dict(motion_module_kwargs or {})
        temb_channels = block_out_channels[0] * 4
        common = dict(temb_channels=temb_channels, cross_attention_dim=cross_attention_dim,
                      audio_attention_dim=audio_attention_dim, groups=norm_num_groups, eps=norm_eps, act_fn=act_fn,
                      time_scale_shift=resnet_time_scale_shift, use_linear_projection=use_linear_projection,
                      upcast_attention=upcast_attention, emo_drop_rate=emo_drop_rate)

        self.conv_in = nn.Conv2d(in_channels, block_out_channels[0], kernel_size=3, padding=1)
        self.time_proj = Timesteps(block_out_channels[0], flip_sin_to_cos, freq_shift)
        self.time_embedding = TimestepEmbedding(block_out_channels[0], temb_channels)

        levels = len(block_out_channels)
        self.down_blocks = nn.ModuleList()
        channels = block_out_channels[0]
        for i, kind in enumerate(down_block_types):
            previous, channels = channels, block_out_channels[i]
            self.down_blocks.append(VideoLevel(
                "down", previous, channels, num_layers=layers_per_block, cross_attention=kind.startswith("CrossAttn"),
                motion_kwargs=motion_kwargs if 2**i in motion_module_resolutions else None, heads=heads[i],
                add_downsample=i < levels - 1, downsample_padding=downsample_padding, **common,
            ))
        self.mid_block = VideoLevel("mid", block_out_channels[-1], block_out_channels[-1], num_layers=1,
                                    cross_attention=True, motion_kwargs=motion_kwargs, heads=heads[-1],
                                    output_scale_factor=mid_block_scale_factor, **common)
        self.up_blocks = nn.ModuleList()
        reversed_channels, reversed_heads = list(reversed(block_out_channels)), list(reversed(heads))
        skip_widths = self._skip_widths(block_out_channels, layers_per_block)
        channels = reversed_channels[0]
        for i, kind in enumerate(up_block_types):
            previous, channels = channels, reversed_channels[i]
            block_in = reversed_channels[min(i + 1, levels - 1)]
            skips = [skip_widths.pop() for _ in range(layers_per_block + 1)]
            self.up_blocks.append(VideoLevel(
                "up", block_in, channels, num_layers=layers_per_block + 1, cross_attention=kind.startswith("CrossAttn"),
                motion_kwargs=motion_kwargs if 2 ** (3 - i) in motion_module_resolutions else None,
                skip_channels=skips, prev_channels=previous, heads=reversed_heads[i], add_upsample=i < levels - 1,
                is_final_block=i == levels - 1, **common,
            ))
        self.conv_norm_out = nn.GroupNorm(norm_num_groups, block_out_channels[0], eps=norm_eps)
        self.conv_act = nn.SiLU()
        self.conv_out = nn.Conv2d(block_out_channels[0], out_channels, kernel_size=3, padding=1)
        name_memory_slots(self)

    @staticmethod
    def _skip_widths(block_out_channels, layers_per_block) -> list[int]:
        """Channel widths of the skip tensors pushed on the way down, in push order."""
        widths = [block_out_channels[0]]
        for i, width in enumerate(block_out_channels):
            widths += [width] * layers_per_block
            if i < len(block_out_channels) - 1:
                widths.append(width)
        return widths

    def forward(self, sample: torch.Tensor, ref_features: dict, timestep, encoder_hidden_states: torch.Tensor,
                audio_embedding: torch.Tensor, audio_emotion: torch.Tensor, memory: MotionMemory,
                memory_update: MemoryUpdate, uc_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Predict the flow-matching velocity for `sample` `(b, 4, f, h, w)`.

        `ref_features`: `ReferenceNet` output for `[reference image, P motion frames]` of each CFG
        copy; `encoder_hidden_states`: face tokens `(b, n, c)`; `audio_embedding`: projected audio
        `(b, f, tokens, dim)`; `audio_emotion`: emotion label per CFG copy (`[9, m]`) or one label;
        `memory` is read and, for `memory_update` "reset"/"append", updated in place;
        `uc_mask`: given when the first half of the batch is the unconditional CFG copy.
        """
        if self.config.center_input_sample:
            sample = 2 * sample - 1.0
        batch, _, frames, height, width = sample.shape
        timestep = torch.as_tensor(timestep, device=sample.device)
        temb = self.time_proj(timestep.reshape(-1).expand(batch)).to(dtype=self.dtype)
        temb = self.time_embedding(temb)
        ctx = dict(face_tokens=encoder_hidden_states, audio=audio_embedding, emotion=audio_emotion.to(sample.device).long(),
                   memory=memory, memory_update=memory_update, uc_mask=uc_mask)

        x = _per_frame(self.conv_in, sample)
        # like diffusers, pass explicit upsample sizes only when the latent is not divisible
        forward_sizes = any(s % 2 ** (len(self.up_blocks) - 1) for s in (height, width))
        skips = [x]
        for level, refs in zip(self.down_blocks, ref_features["down"]):
            x, outputs = level(x, temb, _first_of_each(refs), ctx)
            skips += outputs
        x = self.mid_block(x, temb, _first_of_each(ref_features["mid"][0]), ctx)
        for i, (level, refs) in enumerate(zip(self.up_blocks, ref_features["up"])):
            last = i == len(self.up_blocks) - 1
            upsample_size = skips[-len(level.resnets) - 1].shape[-2:] if forward_sizes and not last else None
            x = level(x, temb, _first_of_each(refs), ctx, skips=skips, upsample_size=upsample_size)
        x = _per_frame(self.conv_norm_out, x)
        return _per_frame(self.conv_out, self.conv_act(x))
