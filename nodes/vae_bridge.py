"""ComfyUI's VAE object behind `memo_pipeline.vae.VAEAdapter`, without importing ComfyUI.

ComfyUI 0.8.0 `comfy.sd.VAE` conventions (read from `comfy/sd.py` and
`comfy/ldm/models/autoencoder.py`):

* ``encode(pixels)``: pixels ``[N, H, W, C]`` in [0, 1] (IMAGE layout). It crops H and W down to
  multiples of 8, maps to [-1, 1] itself (``process_input``), runs the encoder and returns the
  posterior *mode* (= mean, ``DiagonalGaussianRegularizer(sample=False)``) as ``[N, 4, H/8, W/8]``
  float32 on the intermediate device, **unscaled**: ComfyUI multiplies by 0.18215 later, in the
  model's latent format, not in the VAE.
* ``decode(latents)``: unscaled ``[N, 4, h, w]`` -> ``[N, 8h, 8w, 3]`` in [0, 1], clamped
  (``process_output``), float32 on the intermediate device.

MEMO's pipeline wants ``[N, 3, H, W]`` frames in [-1, 1] -> latents times 0.18215 (posterior mean),
and scaled latents -> ``[N, 3, H, W]`` float32 in [0, 1]. So the bridge maps ``x -> (x + 1) / 2``,
moves channels last, and multiplies the latents by 0.18215 (dividing on the way back): the same
numbers as `DiffusersVAE` on the same weights, up to the ``(x + 1) / 2 * 2 - 1`` round trip.

Frames larger than `TILE_SIZE` (512 px) on a side go through ComfyUI's own ``encode_tiled`` /
``decode_tiled`` with the parameters its VAE Encode (Tiled) / VAE Decode (Tiled) nodes pass by
default: 512 px tiles overlapping by 64 px (decode: 64 and 8 latents). ComfyUI averages three
tilings per frame there (see `memo_pipeline.vae.TILE_SIZE`), so its tiled pixels differ from the
library's tiled pixels as both differ from untiled. Up to 512 px the plain calls run, which batch
frames by free memory themselves.
"""

from __future__ import annotations

import torch

from ..memo_pipeline.vae import LATENT_SCALE, TILE_OVERLAP, TILE_SIZE


def check_sd_vae(vae, input_name: str = "vae") -> None:
    """Refuse VAEs whose latent space is not SD1.5's (4 channels, 8x down), with a message naming the input."""
    for method in ("encode", "decode"):
        if not callable(getattr(vae, method, None)):
            raise ValueError(f"input '{input_name}' is not a VAE (no {method} method); connect a Load VAE node")
    channels = getattr(vae, "latent_channels", 4)
    ratio = vae.spacial_compression_encode() if callable(getattr(vae, "spacial_compression_encode", None)) \
        else getattr(vae, "downscale_ratio", 8)
    latent_dim = getattr(vae, "latent_dim", 2)
    if channels != 4 or ratio != 8 or latent_dim != 2:
        raise ValueError(
            f"input '{input_name}': MEMO needs an SD1.5 image VAE (4 latent channels, 8x downscaling), e.g. "
            f"vae-ft-mse-840000-ema-pruned.safetensors (stabilityai/sd-vae-ft-mse); this VAE has {channels} latent "
            f"channels, downscale {ratio}, {latent_dim}-D latents"
        )


class ComfyVAEBridge:
    """Duck-typed adapter from a ComfyUI VAE to `VAEAdapter`.

    ComfyUI's VAE loads itself through the model manager on every call; the MEMO networks are
    loaded again right before they next run (see `sampler.run_clips`).
    """

    def __init__(self, vae, input_name: str = "vae"):
        check_sd_vae(vae, input_name)
        self.vae = vae

    def tiles(self, height: int, width: int) -> bool:
        """Whether frames of `height` x `width` pixels go through ComfyUI's tiled encode/decode
        (above `TILE_SIZE`, as `DiffusersVAE` tiles; a VAE object without them runs whole frames)."""
        tiled = all(callable(getattr(self.vae, name, None)) for name in ("encode_tiled", "decode_tiled"))
        return tiled and max(height, width) > TILE_SIZE

    @torch.no_grad()
    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        if frames.dim() != 4 or frames.shape[1] != 3:
            raise ValueError(f"VAE bridge: frames must be [N, 3, H, W], got {tuple(frames.shape)}")
        pixels = ((frames.float() + 1.0) / 2.0).clamp(0.0, 1.0).movedim(1, -1)
        if self.tiles(*frames.shape[-2:]):
            latents = self.vae.encode_tiled(pixels, tile_x=TILE_SIZE, tile_y=TILE_SIZE, overlap=TILE_OVERLAP)
        else:
            latents = self.vae.encode(pixels)
        if latents.shape[-2:] != (frames.shape[-2] // 8, frames.shape[-1] // 8):
            raise ValueError(f"VAE returned latents of shape {tuple(latents.shape)} for frames {tuple(frames.shape)}")
        return latents.to(device=frames.device, dtype=torch.float32) * LATENT_SCALE

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        latents = latents.float() / LATENT_SCALE
        if self.tiles(latents.shape[-2] * 8, latents.shape[-1] * 8):
            tile, overlap = TILE_SIZE // 8, TILE_OVERLAP // 8  # VAE Decode (Tiled) divides by the compression
            images = self.vae.decode_tiled(latents, tile_x=tile, tile_y=tile, overlap=overlap)
        else:
            images = self.vae.decode(latents)
        if images.dim() == 5:  # video VAEs add a time axis; an image VAE never should
            images = images.reshape(-1, *images.shape[-3:])
        return images[..., :3].movedim(-1, 1).float()
