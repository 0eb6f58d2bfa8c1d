"""Step previews: the denoised estimate of one frame, as a latent for the host's previewer.

For the flow-matching Euler sampler MEMO uses, `x_t = (1 - sigma) x_0 + sigma * noise` and the
network predicts `v = noise - x_0`, so after a step to `sigma_next` the estimate is
`x_0 = x_next - sigma_next * v` (v with classifier-free guidance applied, as the pipeline's
`StepInfo` reports it). The estimate is a scaled SD1.5 latent (times 0.18215), the same space
ComfyUI's samplers hand to `latent_preview`; the host decides how (and whether) to show it.
"""

from __future__ import annotations

import torch


def denoised_latent(latents: torch.Tensor, velocity: torch.Tensor, sigma_next: float,
                    frame: int | None = None) -> torch.Tensor:
    """`(4, h, w)` estimate of the clean latent of one frame (default: the middle one) after a step.

    `latents`, `velocity`: `(1, 4, F, h, w)`.
    """
    if latents.dim() != 5 or latents.shape[:2] != (1, 4) or velocity.shape != latents.shape:
        raise ValueError(f"expected latents and velocity of shape (1, 4, F, h, w), got {tuple(latents.shape)} and "
                         f"{tuple(velocity.shape)}")
    frames = latents.shape[2]
    index = frames // 2 if frame is None else max(0, min(frames - 1, frame))
    return latents[0, :, index].float() - float(sigma_next) * velocity[0, :, index].float().to(latents.device)
