"""MEMO's reference net: diffusers' SD1.5 `UNet2DConditionModel` used as a feature extractor.

It encodes the reference image and the past (motion) frames once per clip. What the diffusion
net consumes from it (docs/architecture.md#reference-net, #truncated-final-blocks, #reference-features):

- for cross-attention layers, the output of each transformer block's first LayerNorm
  (`norm1`, the tokens right before self-attention), `(batch, h*w, c)`;
- for plain down/up layers, each resnet's output `(batch, c, h, w)`.

The released checkpoint has no output head, and its very last transformer only keeps
`norm`, `proj_in` and `transformer_blocks.0.norm1`; the model here drops the same modules so the
checkpoint loads with a strict key check. Face tokens `(2, n, c)` ([uncond, cond]) are *tiled*
over the batch (`.repeat`), so batch entry `i` uses row `i % 2` (docs/architecture.md#reference-tiling).
"""

from __future__ import annotations

import inspect

import torch
from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel

from .reference_features import ReferenceFeatures


class ReferenceNet(UNet2DConditionModel):
    """Same constructor and config keys as `UNet2DConditionModel`; `forward` returns features."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.conv_norm_out = None
        self.conv_act = None
        self.conv_out = None
        final = self._final_transformer()
        final.proj_out = None
        block = final.transformer_blocks[0]
        for name in ("attn1", "norm2", "attn2", "norm3", "ff"):
            setattr(block, name, None)
        del final.transformer_blocks[1:]

    __init__.__signature__ = inspect.signature(UNet2DConditionModel.__init__)

    def _final_transformer(self):
        last = self.up_blocks[-1]
        if not hasattr(last, "attentions"):
            raise ValueError("reference_net: the last up block must be a cross-attention block (as in SD1.5 / MEMO)")
        return last.attentions[-1]

    @torch.no_grad()
    def forward(self, sample: torch.Tensor, timestep, encoder_hidden_states: torch.Tensor) -> ReferenceFeatures:
        """`sample` `(B, 4, h, w)` (copy-major CFG batch), `encoder_hidden_states` `(k, n, c)` with `B % k == 0`.

        Returns one feature per diffusion-net layer: the first transformer block's norm1 output of
        cross-attention layers, the resnet output of plain layers.
        """
        batch = sample.shape[0]
        if batch % encoder_hidden_states.shape[0]:
            raise ValueError(f"reference batch {batch} is not a multiple of the face-token rows {encoder_hidden_states.shape[0]}")
        context = encoder_hidden_states.repeat(batch // encoder_hidden_states.shape[0], 1, 1)
        if self.config.center_input_sample:
            sample = 2 * sample - 1.0
        timestep = torch.as_tensor(timestep, device=sample.device).reshape(-1).expand(batch)
        temb = self.time_embedding(self.time_proj(timestep).to(dtype=sample.dtype))  # the compute dtype (see DiffusionNet)

        features = ReferenceFeatures([[] for _ in self.down_blocks], [], [[] for _ in self.up_blocks])
        slots = self._feature_slots(features)
        hooks = [module.register_forward_hook(lambda mod, args, out, slot=slot: slot.append(out)) for module, slot in slots]
        try:
            x = self.conv_in(sample)
            skips = [x]
            for block in self.down_blocks:
                if getattr(block, "has_cross_attention", False):
                    x, res = block(x, temb, encoder_hidden_states=context)
                else:
                    x, res = block(x, temb)
                skips += res
            x = self.mid_block(x, temb, encoder_hidden_states=context)
            for block in self.up_blocks[:-1]:
                res, skips = tuple(skips[-len(block.resnets):]), skips[: -len(block.resnets)]
                size = skips[-1].shape[2:]
                if getattr(block, "has_cross_attention", False):
                    x = block(x, res, temb, encoder_hidden_states=context, upsample_size=size)
                else:
                    x = block(x, res, temb, upsample_size=size)
            self._final_up_block(x, skips, temb, context)
        finally:
            for hook in hooks:
                hook.remove()
        return features

    def _feature_slots(self, features: ReferenceFeatures) -> list:
        """(module whose output is a feature, the list it is appended to), in execution order."""
        slots = []
        sections = [(features.down, self.down_blocks), ([features.mid], [self.mid_block]), (features.up, self.up_blocks)]
        for per_level, blocks in sections:
            for layers, block in zip(per_level, blocks):
                if getattr(block, "has_cross_attention", False) or block is self.mid_block:
                    # the diffusion net reads the first transformer block of each layer only
                    slots += [(transformer.transformer_blocks[0].norm1, layers) for transformer in block.attentions]
                else:
                    slots += [(resnet, layers) for resnet in block.resnets]
        return slots

    def _final_up_block(self, x, skips, temb, context) -> None:
        """Run the last up block only as far as the last feature (its last transformer's norm1)."""
        block = self.up_blocks[-1]
        for i, (resnet, transformer) in enumerate(zip(block.resnets, block.attentions)):
            x = resnet(torch.cat([x, skips.pop()], dim=1), temb)
            if i < len(block.resnets) - 1:
                x = transformer(x, encoder_hidden_states=context, return_dict=False)[0]
                continue
            b, c, h, w = x.shape
            tokens = transformer.norm(x)
            if transformer.use_linear_projection:
                tokens = transformer.proj_in(tokens.permute(0, 2, 3, 1).reshape(b, h * w, c))
            else:
                tokens = transformer.proj_in(tokens)
                tokens = tokens.permute(0, 2, 3, 1).reshape(b, h * w, tokens.shape[1])
            transformer.transformer_blocks[0].norm1(tokens)  # captured by its hook
