"""The VAE as the pipeline sees it: frames in [-1, 1] <-> latents already multiplied by 0.18215.

MEMO hard-codes the SD1.5 factor 0.18215 (it ignores the VAE config), encodes with the
posterior mean (no sampling), decodes to `(x / 2 + 0.5).clamp(0, 1)` in float32, and runs one
frame per VAE call. `batch_size` > 1 batches frames instead, which is faster and equal within
rounding (the VAE treats every frame independently).
"""

from __future__ import annotations

import os
from typing import Protocol

import torch

LATENT_SCALE = 0.18215


class VAEAdapter(Protocol):
    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """`(n, 3, H, W)` in [-1, 1] -> scaled latents `(n, 4, H/8, W/8)`."""

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents `(n, 4, h, w)` -> float32 frames `(n, 3, 8h, 8w)` in [0, 1]."""


def _chunks(tensor: torch.Tensor, size: int):
    for start in range(0, tensor.shape[0], max(1, size)):
        yield tensor[start:start + max(1, size)]


class DiffusersVAE:
    """`diffusers.AutoencoderKL` (e.g. stabilityai/sd-vae-ft-mse) behind `VAEAdapter`."""

    def __init__(self, vae, batch_size: int = 1):
        self.vae = vae.eval().requires_grad_(False)
        self.batch_size = batch_size

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, device="cpu", dtype=torch.float32, batch_size: int = 1) -> "DiffusersVAE":
        """A diffusers VAE folder (config.json + safetensors) or a single `.safetensors` file in
        the original SD layout (as ComfyUI users keep them in `models/vae`)."""
        from diffusers import AutoencoderKL

        path = os.fspath(path)
        if os.path.isdir(path):
            vae = AutoencoderKL.from_pretrained(path, use_safetensors=True, local_files_only=True)
        elif path.endswith(".safetensors") and os.path.isfile(path):
            from .model_files import load_single_file_vae  # config from the file's shapes: nothing downloaded

            vae = load_single_file_vae(path)
        else:
            raise ValueError(f"VAE '{path}' is neither a diffusers folder nor a .safetensors file")
        torch.nn.Module.to(vae, device=device, dtype=dtype)
        return cls(vae, batch_size)

    @property
    def device(self) -> torch.device:
        return next(self.vae.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.vae.parameters()).dtype

    @torch.no_grad()
    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        frames = frames.to(self.device, self.dtype)
        return torch.cat([self.vae.encode(c).latent_dist.mean * LATENT_SCALE for c in _chunks(frames, self.batch_size)])

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        latents = latents.to(self.device, self.dtype) / LATENT_SCALE
        decoded = torch.cat([self.vae.decode(c).sample for c in _chunks(latents, self.batch_size)])
        return (decoded / 2 + 0.5).clamp(0, 1).float()
