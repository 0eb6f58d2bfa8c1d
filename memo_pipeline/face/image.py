"""Image conventions at the face front end's boundary.

Inside the face code an image is a numpy float32 array ``[H, W, 3]``, RGB, values in [0, 1]; a
batch of frames is a torch float32 tensor ``[N, H, W, 3]`` (ComfyUI's IMAGE layout). The public
functions accept more than that and convert here, once, so that every later step can trust its
input:

* numpy arrays, torch tensors or PIL images;
* ``[H, W]``, ``[H, W, C]`` or a batch of one ``[1, H, W, C]``; C = 1 (gray), 2 (gray + alpha),
  3 (RGB) or 4 (RGBA); alpha is dropped, like PIL's ``convert("RGB")`` that MEMO uses;
* uint8 (0..255), uint16 (0..65535) or float (0..1; tiny overshoots are clipped, anything else
  is rejected because it means the caller used another convention).

Images smaller than ``MIN_SIDE`` or larger than ``MAX_SIDE`` / ``MAX_PIXELS`` are rejected with a
message naming the image instead of failing inside a model.
"""

from __future__ import annotations

import math
import os
import warnings
from typing import Any

import numpy as np
import torch

from .errors import FaceImageError

MIN_SIDE = 64
MAX_SIDE = 16384
MAX_PIXELS = 8192 * 8192
_FLOAT_SLACK = 1e-3


def as_rgb_image(image: Any, name: str = "image") -> np.ndarray:
    """One image as float32 ``[H, W, 3]`` RGB in [0, 1], contiguous.

    A float32 RGB input in range may come back as the same memory; nothing here writes to it.
    """
    _refuse_huge_early(image, name)
    tensor = _as_tensor(image, name)
    if tensor.ndim == 4:
        if tensor.shape[0] != 1:
            raise FaceImageError(
                f"{name}: expected a single image but got a batch of {tensor.shape[0]}; "
                "pick one image from the batch first"
            )
        tensor = tensor[0]
    if tensor.ndim == 2:
        tensor = tensor[:, :, None]
    if tensor.ndim != 3:
        raise FaceImageError(f"{name}: expected [H, W, C] image data, got shape {tuple(tensor.shape)}")
    rgb = _to_rgb_float(tensor, name)
    check_image_size(rgb.shape[0], rgb.shape[1], name)
    return np.ascontiguousarray(rgb.cpu().numpy())


def as_rgb_frames(frames: Any, name: str = "frames") -> torch.Tensor:
    """A chunk of frames as float32 ``[N, H, W, 3]`` in [0, 1], on the device they came on.

    A single ``[H, W, C]`` frame becomes a chunk of one. Size limits are not applied here:
    generated frames are whatever the generator made, the original image was checked already.
    """
    tensor = _as_tensor(frames, name)
    if tensor.ndim == 3:
        tensor = tensor[None]
    if tensor.ndim != 4:
        raise FaceImageError(f"{name}: expected [N, H, W, C] frames, got shape {tuple(tensor.shape)}")
    return _to_rgb_float(tensor, name)


def check_image_size(height: int, width: int, name: str = "image") -> None:
    """Reject images too small for a face model to see anything, or too large to hold safely."""
    if min(height, width) < MIN_SIDE:
        raise FaceImageError(
            f"{name}: {width}x{height} pixels is too small; both sides must be at least {MIN_SIDE} px"
        )
    if max(height, width) > MAX_SIDE or height * width > MAX_PIXELS:
        raise FaceImageError(
            f"{name}: {width}x{height} pixels is too large (limits: {MAX_SIDE} px a side, "
            f"{MAX_PIXELS // 1_000_000} megapixels); downscale it first"
        )


def load_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as float32 ``[H, W, 3]`` RGB in [0, 1], keeping 16-bit precision.

    EXIF orientation is applied (as ComfyUI's LoadImage does). The size is checked from the
    header before the pixels are decoded, so a huge file is refused without being read.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FaceImageError(f"image file not found: {path}")
    try:
        with Image.open(path) as opened:
            width, height = opened.size
            check_image_size(height, width, path)
            pil = ImageOps.exif_transpose(opened)
            pil.load()
    except FaceImageError:
        raise
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
        raise FaceImageError(f"cannot read image {path}: {exc}") from exc
    return as_rgb_image(pil_to_array(pil, path), path)


def pil_to_array(pil: Any, name: str = "image") -> np.ndarray:
    """PIL image to a numpy array that ``as_rgb_image`` understands, without losing 16-bit data."""
    mode = pil.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N"):
        return np.asarray(pil).astype(np.uint16)
    if mode == "I":
        values = np.asarray(pil)
        if values.min() < 0 or values.max() > 65535:
            raise FaceImageError(f"{name}: 32-bit integer image with values outside 0..65535")
        return values.astype(np.uint16)
    if mode == "F":
        return np.asarray(pil, dtype=np.float32)
    if mode in ("RGB", "L"):
        return np.asarray(pil)
    return np.asarray(pil.convert("RGBA" if "A" in mode or "transparency" in pil.info else "RGB"))


def _refuse_huge_early(image: Any, name: str) -> None:
    """Apply the upper size limit from the declared shape, before any pixel is copied or converted."""
    if type(image).__module__.startswith("PIL."):
        width, height = image.size
    else:
        shape = tuple(getattr(image, "shape", ()))
        if len(shape) == 4:
            shape = shape[1:]
        if len(shape) not in (2, 3):
            return
        height, width = shape[0], shape[1]
    if max(height, width) > MAX_SIDE or height * width > MAX_PIXELS:
        check_image_size(height, width, name)


def _as_tensor(image: Any, name: str) -> torch.Tensor:
    if isinstance(image, torch.Tensor):
        return image.detach()
    if type(image).__module__.startswith("PIL."):
        image = pil_to_array(image, name)
    if isinstance(image, np.ndarray):
        if image.dtype == np.uint16:
            return torch.from_numpy(image.astype(np.float32) / 65535.0)
        if image.dtype.kind == "f" and image.dtype != np.float32:
            image = image.astype(np.float32)
        if image.dtype not in (np.uint8, np.float32):
            raise FaceImageError(f"{name}: unsupported pixel type {image.dtype} (use uint8, uint16 or float)")
        image = np.ascontiguousarray(image)
        with warnings.catch_warnings():
            # Read-only arrays (e.g. from PIL) are fine: the conversion below never writes in place.
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            return torch.from_numpy(image)
    raise FaceImageError(f"{name}: expected a numpy array, torch tensor or PIL image, got {type(image).__name__}")


def _to_rgb_float(tensor: torch.Tensor, name: str) -> torch.Tensor:
    channels = tensor.shape[-1]
    if channels not in (1, 2, 3, 4):
        hint = " (channels-first data? the convention is channels last)" if tensor.shape[-3] in (1, 3, 4) else ""
        raise FaceImageError(f"{name}: expected 1 to 4 channels in the last axis, got shape {tuple(tensor.shape)}{hint}")
    if tensor.shape[-2] == 0 or tensor.shape[-3] == 0:
        raise FaceImageError(f"{name}: empty image, shape {tuple(tensor.shape)}")

    if tensor.dtype == torch.uint8:
        tensor = tensor.float() / 255.0
    elif tensor.dtype == torch.uint16:
        tensor = tensor.float() / 65535.0
    elif tensor.is_floating_point():
        tensor = tensor.float()
        low, high = (float(v) for v in torch.aminmax(tensor))  # NaN and inf show up in the extremes
        if not (math.isfinite(low) and math.isfinite(high)):
            raise FaceImageError(f"{name}: contains NaN or infinite values")
        if low < -_FLOAT_SLACK or high > 1.0 + _FLOAT_SLACK:
            raise FaceImageError(
                f"{name}: float pixels must lie in [0, 1], found [{low:.4g}, {high:.4g}] "
                "(0..255 data should be uint8; [-1, 1] data must be mapped back first)"
            )
        if low < 0.0 or high > 1.0:
            tensor = tensor.clamp(0.0, 1.0)
    else:
        raise FaceImageError(f"{name}: unsupported pixel type {tensor.dtype} (use uint8, uint16 or float)")

    if channels in (1, 2):
        tensor = tensor[..., :1].expand(*tensor.shape[:-1], 3)
    elif channels == 4:
        tensor = tensor[..., :3]
    return tensor.contiguous()
