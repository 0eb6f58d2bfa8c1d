"""The VAE as the pipeline sees it: frames in [-1, 1] <-> latents already multiplied by 0.18215.

MEMO hard-codes the SD1.5 factor 0.18215 (it ignores the VAE config), encodes with the
posterior mean (no sampling), decodes to `(x / 2 + 0.5).clamp(0, 1)` in float32, and runs one
frame per VAE call. `batch_size` > 1 batches frames instead, which is equal within rounding (the
VAE treats every frame independently); `batch_size=None` picks it per device and frame size
(`auto_batch_size`), so no device ever gets a whole video in one call.

Memory: frames larger than `TILE_SIZE` on a side are encoded and decoded in overlapping spatial
tiles (`tiling="auto"`, the default; see `TILE_SIZE` for the parameters and the deviation from
untiled). Frames up to 512 px take exactly the untiled path, bit for bit.
"""

from __future__ import annotations

import json
import os
import re
from contextlib import contextmanager
from pathlib import Path
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


TILE_SIZE = 512
"""Pixels per side of a VAE tile, and the frame side above which `tiling="auto"` tiles: the default
`tile_size` of ComfyUI 0.8.0's VAE Decode (Tiled) and VAE Encode (Tiled) nodes.

The tiling itself is diffusers' (`AutoencoderKL.tiled_decode` / `_tiled_encode`): tiles of
512 px (64 latents) every 448 px, the 64 px they share blended linearly. ComfyUI's nodes use the
same tile and overlap but average three tilings (512x512, 256x1024, 1024x256, feathered), which
costs three decodes per frame; here a frame is decoded about once (plus the overlaps).

Tiled is not untiled: each tile normalises (GroupNorm) and attends (the mid-block attention) over
itself only, so pixels move everywhere, not only at the seams. Measured with `python
bench/vae_tiling.py` (seeded random weights, float32 CPU; a drawn portrait encoded, its latents
and N(0, 1) latents decoded; max abs / PSNR, decode on [0, 1], encode on the latents' range):

    VAE                   side   encode            decode portrait   decode noise
    sd-vae-ft-mse-shaped  768    0.176 / 31.1 dB   0.893 / 24.8 dB   0.102 / 42.1 dB
    sd-vae-ft-mse-shaped  1024   0.204 / 31.7 dB   0.982 / 25.0 dB   0.150 / 41.4 dB
    tiny (tests)          768    0.390 / 34.9 dB   1.000 / 21.8 dB   0.149 / 44.3 dB
    tiny (tests)          1024   0.371 / 30.6 dB   1.000 / 20.7 dB   0.152 / 41.3 dB

The portrait's latents (large flat areas next to detail, so tiles with very different
statistics) move most. No trained VAE was at hand, so how far trained sd-vae-ft-mse weights move
is not measured here. `tiling="off"` gives the untiled pixels at the untiled memory cost."""
TILE_OVERLAP = 64
"""Pixels two neighbouring tiles share: the default `overlap` of the same ComfyUI nodes."""
TILING_MODES = ("auto", "off")
"""`auto`: tile frames larger than `TILE_SIZE` on a side (smaller ones are one tile anyway, so an
`on` mode would be the same); `off`: whole frames, whatever their size (more memory)."""

GPU_PIXELS_PER_CALL = GPU_FRAMES_PER_CALL * TILE_SIZE * TILE_SIZE
"""On a GPU, the pixels one VAE call may hold: a clip of 512 px frames (or 512 px tiles). Larger
untiled frames get proportionally fewer frames per call (1024 px: 4)."""


def auto_batch_size(device: torch.device | str, height: int, width: int, tiled: bool = False) -> int:
    """Frames per VAE call for frames of `height` x `width` on `device` (see the constants above);
    `tiled`: the VAE tiles such frames, so one call holds at most a tile of each frame."""
    if torch.device(device).type == "cpu":
        return CPU_FRAMES_PER_CALL
    if tiled:
        height, width = min(height, TILE_SIZE), min(width, TILE_SIZE)
    return max(1, min(GPU_FRAMES_PER_CALL, GPU_PIXELS_PER_CALL // max(1, height * width)))


def _chunks(tensor: torch.Tensor, size: int):
    for start in range(0, tensor.shape[0], max(1, size)):
        yield tensor[start:start + max(1, size)]


class DiffusersVAE:
    """`diffusers.AutoencoderKL` (e.g. stabilityai/sd-vae-ft-mse) behind `VAEAdapter`."""

    def __init__(self, vae, batch_size: int | None = None, tiling: str = "auto"):
        if tiling not in TILING_MODES:
            raise ValueError(f"VAE tiling must be one of {', '.join(TILING_MODES)}, not {tiling!r}")
        self.vae = vae.eval().requires_grad_(False)
        self.batch_size = batch_size
        self.tiling = tiling
        configure_tiles(self.vae)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, device="cpu", dtype=torch.float32,
                        batch_size: int | None = None, tiling: str = "auto") -> "DiffusersVAE":
        """A diffusers VAE folder (config.json + safetensors) or a single `.safetensors` file in
        the original SD layout (as ComfyUI users keep them in `models/vae`)."""

        if vae_layout(path) == "folder":
            vae = load_vae_folder(path)
        else:
            vae = load_single_file_vae(path)
        torch.nn.Module.to(vae, device=device, dtype=dtype)
        return cls(vae, batch_size, tiling)

    @property
    def device(self) -> torch.device:
        return next(self.vae.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.vae.parameters()).dtype

    def tiles(self, height: int, width: int) -> bool:
        """Whether frames of `height` x `width` pixels are encoded and decoded in tiles."""
        return self.tiling == "auto" and max(height, width) > TILE_SIZE

    def frames_per_call(self, height: int, width: int) -> int:
        return self.batch_size or auto_batch_size(self.device, height, width, self.tiles(height, width))

    @torch.no_grad()
    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        frames = frames.to(self.device, self.dtype)
        size = self.frames_per_call(*frames.shape[-2:])
        with _tiling(self.vae, self.tiles(*frames.shape[-2:])):
            return torch.cat([self.vae.encode(c).latent_dist.mean * LATENT_SCALE for c in _chunks(frames, size)])

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        latents = latents.to(self.device, self.dtype) / LATENT_SCALE
        size = self.frames_per_call(latents.shape[-2] * 8, latents.shape[-1] * 8)
        with _tiling(self.vae, self.tiles(latents.shape[-2] * 8, latents.shape[-1] * 8)):
            decoded = torch.cat([self.vae.decode(c).sample for c in _chunks(latents, size)])
        return (decoded / 2 + 0.5).clamp(0, 1).float()


@contextmanager
def _tiling(vae, on: bool):
    """diffusers' tiling of `vae` switched on or off for one call, then back as it was (the module
    may be shared, e.g. with ComfyUI's VAE or another wrapper)."""
    before = vae.use_tiling
    vae.use_tiling = on
    try:
        yield
    finally:
        vae.use_tiling = before


def configure_tiles(vae) -> None:
    """Set the tiles of diffusers' own tiling of `vae` (an AutoencoderKL) to ComfyUI's tile size and
    overlap; `DiffusersVAE` switches the tiling on (`use_tiling`) only for calls it tiles, and
    diffusers tiles only frames larger than `tile_sample_min_size` on a side in any case."""
    downscale = 2 ** (len(vae.config.block_out_channels) - 1)
    vae.tile_sample_min_size = TILE_SIZE
    vae.tile_latent_min_size = TILE_SIZE // downscale
    vae.tile_overlap_factor = TILE_OVERLAP / TILE_SIZE


class VAEFileError(ValueError):
    """A VAE file or folder that cannot be loaded; the message names it and says why in words."""


SINGLE_FILE_SUFFIXES = (".safetensors", ".sft")
"""Single VAE files read (ComfyUI's Load VAE lists the same safetensors suffixes); pickles are not."""
PARENT_PREFIXES = ("first_stage_model.", "vae.")
"""Prefixes of a VAE saved with its parent model's key names; stripped when every key has one."""
TRAINING_ONLY_PREFIXES = ("loss.", "model_ema.")
"""Training leftovers some released VAE files carry (the discriminator, EMA copies); not loaded."""


def vae_layout(path: str | os.PathLike) -> str:
    """"folder" (diffusers: config.json + weights) or "single file" (SD or diffusers key names)."""
    path = Path(path)
    if path.is_dir():
        return "folder"
    if path.is_file() and path.name.lower().endswith(SINGLE_FILE_SUFFIXES):
        return "single file"
    raise VAEFileError(f"VAE '{path}' is neither a diffusers folder nor a {' / '.join(SINGLE_FILE_SUFFIXES)} file")


def vae_folder_files(folder: str | os.PathLike) -> tuple[dict, list[Path]]:
    """A diffusers VAE folder's config and weight files, found by the MEMO loader's rules."""
    from .loading import CheckpointError, read_config, weight_files

    try:
        return read_config(folder), weight_files(folder)
    except CheckpointError as err:
        raise VAEFileError(f"VAE folder {folder}: {err}") from None


def _read_safetensors(path: str) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(path)
    except (SafetensorError, OSError) as err:
        raise VAEFileError(f"VAE '{path}' is not a readable safetensors file: {err}") from err


_OLD_ATTENTION_NAMES = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


def _diffusers_attention(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Older diffusers files (sd-vae-ft-mse among them) name the mid-block attention
    query/key/value/proj_attn; today's AutoencoderKL calls them to_q/to_k/to_v/to_out.0 and keeps
    them as linear weights (files converted from the original layout may hold them as 1x1 convs)."""
    renamed = {}
    for key, value in tensors.items():
        match = re.fullmatch(r"(.*\.attentions\.\d+\.)(query|key|value|proj_attn|to_q|to_k|to_v|to_out\.0)(\.(?:weight|bias))", key)
        if match:
            key = f"{match[1]}{_OLD_ATTENTION_NAMES.get(match[2], match[2])}{match[3]}"
            if match[3] == ".weight" and value.ndim == 4 and tuple(value.shape[2:]) == (1, 1):
                value = value[:, :, 0, 0]
        renamed[key] = value
    return renamed


def build_vae(config: dict, tensors: dict[str, torch.Tensor], source: str):
    """AutoencoderKL from `config` on the meta device, then its weights assigned strictly (no
    second allocation, no accelerate needed, nothing fetched). With meta tensors this is the check
    `models check` runs: the same code path, without reading the data."""
    from diffusers import AutoencoderKL

    from .loading import CheckpointError, build_model, load_weights_strict

    try:
        model = build_model(AutoencoderKL, config, source, device="meta")
        load_weights_strict(model, _diffusers_attention(tensors), source)
    except CheckpointError as err:
        raise VAEFileError(str(err)) from None
    return model.float()


def load_vae_folder(folder: str | os.PathLike):
    """A diffusers VAE folder: config.json + diffusion_pytorch_model.safetensors (or model.safetensors, or shards)."""
    from .loading import CheckpointError, read_weights

    config, _ = vae_folder_files(folder)
    try:
        tensors, source = read_weights(folder)
    except CheckpointError as err:
        raise VAEFileError(f"VAE folder {folder}: {err}") from err
    return build_vae(config, tensors, source)


def is_diffusers_layout(keys) -> bool:
    """Diffusers key names (encoder.down_blocks.*, decoder.up_blocks.*) rather than the original SD ones."""
    return any(k.startswith(("encoder.down_blocks.", "decoder.up_blocks.")) for k in keys)


def single_file_config(tensors: dict[str, torch.Tensor], source: str = "VAE") -> dict:
    """The AutoencoderKL config of an SD-layout VAE file (LDM or diffusers key names), from its shapes."""
    diffusers_layout = is_diffusers_layout(tensors)
    block = r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.conv1\.weight" if diffusers_layout else \
        r"encoder\.down\.(\d+)\.block\.(\d+)\.conv1\.weight"
    found = {}
    for key, value in tensors.items():
        match = re.fullmatch(block, key)
        if match and len(value.shape) >= 1:
            found[(int(match[1]), int(match[2]))] = value.shape[0]
    conv_in = tensors.get("encoder.conv_in.weight")
    conv_out = tensors.get("decoder.conv_out.weight")
    quant = tensors.get("quant_conv.weight")
    shaped = all(t is not None and len(t.shape) == 4 for t in (conv_in, conv_out, quant))
    if not found or not shaped:
        raise VAEFileError(f"{source} is not an SD VAE (expected encoder.down.*, quant_conv, decoder.* "
                           "tensors; a full SD checkpoint with the VAE inside is not supported, extract the VAE first)")
    levels = max(i for i, _ in found) + 1
    if any((i, 0) not in found for i in range(levels)):
        raise VAEFileError(f"{source} is not a Stable Diffusion VAE: its encoder levels are not numbered 0..{levels - 1}")
    config = json.loads(json.dumps(SD_VAE_ARCHITECTURE))
    config.update(
        in_channels=int(conv_in.shape[1]), out_channels=int(conv_out.shape[0]), latent_channels=int(quant.shape[0]) // 2,
        block_out_channels=[int(found[(i, 0)]) for i in range(levels)],
        layers_per_block=max(j for _, j in found) + 1,
        down_block_types=["DownEncoderBlock2D"] * levels, up_block_types=["UpDecoderBlock2D"] * levels,
    )
    return config


def single_file_state(tensors: dict[str, torch.Tensor], metadata: dict, source: str) -> tuple[dict, dict[str, torch.Tensor]]:
    """(AutoencoderKL config, tensors under diffusers' key names) of a single VAE file's tensors.

    The one rule for single files, used by the loader (real tensors) and `models check` (meta
    tensors): a parent model's prefix is stripped, training leftovers dropped, the config read off
    the shapes, and original-layout (LDM) names converted; diffusers names are taken as they are,
    as ComfyUI's Load VAE does."""
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    for prefix in PARENT_PREFIXES:  # a VAE saved with its parent model's prefix
        if tensors and all(k.startswith(prefix) for k in tensors):
            tensors = {k[len(prefix):]: v for k, v in tensors.items()}
    tensors = {k: v for k, v in tensors.items() if not k.startswith(TRAINING_ONLY_PREFIXES)}
    config = single_file_config(tensors, source)
    groups = (metadata or {}).get("norm_num_groups")  # only a non-SD file needs to say it (e.g. the tiny test VAE)
    if groups is not None:
        try:
            config["norm_num_groups"] = int(groups)
        except (TypeError, ValueError):
            raise VAEFileError(f"{source}: its metadata 'norm_num_groups' is {groups!r}, not a whole number") from None
        if config["norm_num_groups"] < 1:
            raise VAEFileError(f"{source}: its metadata 'norm_num_groups' is {groups!r}, not a positive number")
    elif any(width % config["norm_num_groups"] for width in config["block_out_channels"]):
        raise VAEFileError(f"{source}: widths {config['block_out_channels']} are not those of a Stable Diffusion VAE "
                           "and the file does not say its GroupNorm group count (metadata 'norm_num_groups')")
    from .loading import CheckpointError, check_config_limits

    try:
        check_config_limits(config, source)
    except CheckpointError as err:
        raise VAEFileError(str(err)) from None
    if not is_diffusers_layout(tensors):
        try:
            tensors = convert_ldm_vae_checkpoint(tensors, config)
        except (KeyError, IndexError, ValueError, RuntimeError):
            raise VAEFileError(f"{source}: its tensors do not form a Stable Diffusion VAE in the original layout "
                               "(some encoder, decoder or attention tensors are missing or misshapen)") from None
    return config, tensors


def _metadata(path: str) -> dict:
    from safetensors import safe_open

    with safe_open(path, framework="pt") as f:
        return dict(f.metadata() or {})


def load_single_file_vae(path: str | os.PathLike):
    """A single `.safetensors` VAE in the original SD (LDM) layout, as ComfyUI keeps them, or in
    diffusers' key layout. The config is built here; nothing is downloaded."""
    path = os.fspath(path)
    tensors = _read_safetensors(path)
    config, tensors = single_file_state(tensors, _metadata(path), path)
    return build_vae(config, tensors, path)
