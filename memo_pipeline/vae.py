"""The VAE as the pipeline sees it: frames in [-1, 1] <-> latents already multiplied by 0.18215.

MEMO hard-codes the SD1.5 factor 0.18215 (it ignores the VAE config), encodes with the
posterior mean (no sampling), decodes to `(x / 2 + 0.5).clamp(0, 1)` in float32, and runs one
frame per VAE call. `batch_size` > 1 batches frames instead, which is equal within rounding (the
VAE treats every frame independently); `batch_size=None` picks it per device (`auto_batch_size`).
"""

from __future__ import annotations

import json
import os
import re
from typing import Protocol

import torch

LATENT_SCALE = 0.18215

# The architecture of stabilityai/sd-vae-ft-mse (the SD1.5 autoencoder), written out here so
# that a single-file VAE never makes diffusers look for a config on the internet. The widths,
# depth and latent size are read from the file itself (`single_file_config`); what a file's
# shapes cannot tell (group-norm groups, block kinds) is the SD architecture's.
SD_VAE_ARCHITECTURE = dict(
    in_channels=3, out_channels=3, latent_channels=4, block_out_channels=[128, 256, 512, 512], layers_per_block=2,
    norm_num_groups=32, act_fn="silu", down_block_types=["DownEncoderBlock2D"] * 4,
    up_block_types=["UpDecoderBlock2D"] * 4, sample_size=256, scaling_factor=LATENT_SCALE,
)


class VAEAdapter(Protocol):
    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """`(n, 3, H, W)` in [-1, 1] -> scaled latents `(n, 4, H/8, W/8)`."""

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents `(n, 4, h, w)` -> float32 frames `(n, 3, 8h, 8w)` in [0, 1]."""


CPU_FRAMES_PER_CALL = 1
"""On a CPU, one frame per call: the sd-vae-ft-mse-sized VAE is bound by its convolutions there,
and batching frames only makes every activation larger. Re-derive with
`python bench/cpu_tuning_constants.py vae` (16 frames decoded and encoded in 1, 4 and 16 per call)."""
GPU_FRAMES_PER_CALL = 16
"""On a GPU, one clip per call (the usual batching); `bench/device_check.py` times 1 vs 16."""


def auto_batch_size(device: torch.device | str, height: int, width: int) -> int:
    """Frames per VAE call for frames of `height` x `width` on `device` (see the two constants)."""
    if torch.device(device).type == "cpu":
        return CPU_FRAMES_PER_CALL
    return GPU_FRAMES_PER_CALL


def _chunks(tensor: torch.Tensor, size: int):
    for start in range(0, tensor.shape[0], max(1, size)):
        yield tensor[start:start + max(1, size)]


class DiffusersVAE:
    """`diffusers.AutoencoderKL` (e.g. stabilityai/sd-vae-ft-mse) behind `VAEAdapter`."""

    def __init__(self, vae, batch_size: int | None = None):
        self.vae = vae.eval().requires_grad_(False)
        self.batch_size = batch_size

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, device="cpu", dtype=torch.float32,
                        batch_size: int | None = None) -> "DiffusersVAE":
        """A diffusers VAE folder (config.json + safetensors) or a single `.safetensors` file in
        the original SD layout (as ComfyUI users keep them in `models/vae`)."""

        path = os.fspath(path)
        if os.path.isdir(path):
            vae = load_vae_folder(path)
        elif path.endswith(".safetensors") and os.path.isfile(path):
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
        size = self.batch_size or auto_batch_size(self.device, *frames.shape[-2:])
        return torch.cat([self.vae.encode(c).latent_dist.mean * LATENT_SCALE for c in _chunks(frames, size)])

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        latents = latents.to(self.device, self.dtype) / LATENT_SCALE
        size = self.batch_size or auto_batch_size(self.device, latents.shape[-2] * 8, latents.shape[-1] * 8)
        decoded = torch.cat([self.vae.decode(c).sample for c in _chunks(latents, size)])
        return (decoded / 2 + 0.5).clamp(0, 1).float()


def _read_safetensors(path: str) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(path)
    except (SafetensorError, OSError) as err:
        raise ValueError(f"VAE '{path}' is not a readable safetensors file: {err}") from err


_OLD_ATTENTION_NAMES = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


def _rename_old_attention(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Older diffusers files (sd-vae-ft-mse among them) name the mid-block attention
    query/key/value/proj_attn; today's AutoencoderKL calls them to_q/to_k/to_v/to_out.0."""
    renamed = {}
    for key, value in tensors.items():
        match = re.fullmatch(r"(.*\.attentions\.\d+\.)(query|key|value|proj_attn)(\.(?:weight|bias))", key)
        renamed[f"{match[1]}{_OLD_ATTENTION_NAMES[match[2]]}{match[3]}" if match else key] = value
    return renamed


def _build_and_load(config: dict, tensors: dict[str, torch.Tensor], source: str):
    """AutoencoderKL from `config` on the meta device, then its weights assigned strictly (no
    second allocation, no accelerate needed, nothing fetched)."""
    from diffusers import AutoencoderKL

    from .loading import CheckpointError, build_model, load_weights_strict

    tensors = _rename_old_attention(tensors)
    model = build_model(AutoencoderKL, config, source, device="meta")
    try:
        load_weights_strict(model, tensors, source)
    except CheckpointError as err:
        raise ValueError(str(err)) from err
    return model.float()


def load_vae_folder(folder: str | os.PathLike):
    """A diffusers VAE folder: config.json + diffusion_pytorch_model.safetensors."""
    from .loading import CheckpointError, read_config, read_weights

    try:
        config = read_config(folder)
        tensors, source = read_weights(folder)
    except CheckpointError as err:
        raise ValueError(f"VAE folder {folder}: {err}") from err
    return _build_and_load(config, tensors, source)


def single_file_config(tensors: dict[str, torch.Tensor], source: str = "VAE") -> dict:
    """The AutoencoderKL config of an SD-layout VAE file (LDM or diffusers key names), from its shapes."""
    diffusers_layout = any(k.startswith("encoder.down_blocks.") for k in tensors)
    block = r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.conv1\.weight" if diffusers_layout else \
        r"encoder\.down\.(\d+)\.block\.(\d+)\.conv1\.weight"
    found = {}
    for key, value in tensors.items():
        match = re.fullmatch(block, key)
        if match:
            found[(int(match[1]), int(match[2]))] = value.shape[0]
    conv_in = tensors.get("encoder.conv_in.weight")
    conv_out = tensors.get("decoder.conv_out.weight")
    quant = tensors.get("quant_conv.weight")
    if not found or conv_in is None or conv_out is None or quant is None:
        raise ValueError(f"{source} is not an SD VAE (expected encoder.down.*, quant_conv, decoder.* tensors; "
                         "a full SD checkpoint with the VAE inside is not supported, extract the VAE first)")
    levels = max(i for i, _ in found) + 1
    config = json.loads(json.dumps(SD_VAE_ARCHITECTURE))
    config.update(
        in_channels=int(conv_in.shape[1]), out_channels=int(conv_out.shape[0]), latent_channels=int(quant.shape[0]) // 2,
        block_out_channels=[int(found[(i, 0)]) for i in range(levels)],
        layers_per_block=max(j for _, j in found) + 1,
        down_block_types=["DownEncoderBlock2D"] * levels, up_block_types=["UpDecoderBlock2D"] * levels,
    )
    return config


def _metadata(path: str) -> dict:
    from safetensors import safe_open

    with safe_open(path, framework="pt") as f:
        return dict(f.metadata() or {})


def load_single_file_vae(path: str | os.PathLike):
    """A single `.safetensors` VAE in the original SD (LDM) layout, as ComfyUI keeps them, or in
    diffusers' key layout. The config is built here; nothing is downloaded."""
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    path = os.fspath(path)
    tensors = _read_safetensors(path)
    for prefix in ("first_stage_model.", "vae."):  # a VAE saved with its parent model's prefix
        if tensors and all(k.startswith(prefix) for k in tensors):
            tensors = {k[len(prefix):]: v for k, v in tensors.items()}
    tensors = {k: v for k, v in tensors.items() if not k.startswith(("loss.", "model_ema."))}
    config = single_file_config(tensors, path)
    groups = _metadata(path).get("norm_num_groups")  # only a non-SD file needs to say it (e.g. the tiny test VAE)
    if groups is not None:
        config["norm_num_groups"] = int(groups)
    elif any(width % config["norm_num_groups"] for width in config["block_out_channels"]):
        raise ValueError(f"{path}: widths {config['block_out_channels']} are not those of a Stable Diffusion VAE and "
                         "the file does not say its GroupNorm group count (metadata 'norm_num_groups')")
    if not any(k.startswith("encoder.down_blocks.") for k in tensors):
        tensors = convert_ldm_vae_checkpoint(tensors, config)
    return _build_and_load(config, tensors, path)
