"""Cheap progress previews: the denoised estimate of one frame, projected from latents to RGB.

No VAE call: SD1.5 latents (already times 0.18215) map to rough RGB with ComfyUI's linear
`latent_rgb_factors` for SD15 (`comfy/latent_formats.py`, ComfyUI 0.8.0), then `(x + 1) / 2`.
For the flow-matching Euler sampler MEMO uses, `x_t = (1 - sigma) x_0 + sigma * noise` and the
network predicts `v = noise - x_0`, so after a step to `sigma_next` the estimate is
`x_0 = x_next - sigma_next * v` (v with classifier-free guidance applied, as the pipeline's
`StepInfo` reports it).
"""

from __future__ import annotations

import torch

SD15_LATENT_RGB_FACTORS = torch.tensor([
    #   R        G        B
    [0.3512, 0.2297, 0.3227],
    [0.3250, 0.4974, 0.2350],
    [-0.2829, 0.1762, 0.2721],
    [-0.2120, -0.2616, -0.7177],
])


def latents_to_rgb(latent: torch.Tensor) -> torch.Tensor:
    """`(4, h, w)` scaled SD latent -> `(h, w, 3)` float32 in [0, 1] on the CPU."""
    if latent.dim() != 3 or latent.shape[0] != 4:
        raise ValueError(f"expected a (4, h, w) latent, got {tuple(latent.shape)}")
    rgb = torch.einsum("chw,cr->hwr", latent.detach().float().cpu(), SD15_LATENT_RGB_FACTORS)
    return ((rgb + 1.0) / 2.0).clamp(0.0, 1.0)


def step_preview(latents: torch.Tensor, velocity: torch.Tensor, sigma_next: float, frame: int | None = None) -> torch.Tensor:
    """`(h, w, 3)` preview of the denoised estimate after a step; `latents`, `velocity` `(1, 4, F, h, w)`."""
    frames = latents.shape[2]
    index = frames // 2 if frame is None else max(0, min(frames - 1, frame))
    estimate = latents[0, :, index].float() - float(sigma_next) * velocity[0, :, index].float().to(latents.device)
    return latents_to_rgb(estimate)
