"""The reference portrait as MEMO sees it: one square picture, prepared the same way by the
command line, the ComfyUI nodes and the Python API.

Modes:

* ``resize`` (default, the official preprocessing): the whole picture, as 8-bit RGB, resized
  to ``resolution`` x ``resolution`` with PIL's bilinear filter (what torchvision's ``Resize``
  does to a PIL image, antialiasing included). A non-square picture is squashed, as in the
  official code; a warning says so.
* ``center-crop``: the largest centred square, then the same resize.
* ``face-crop``: a square around a detected face (``crop_face``, needs ``face``).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from .face.image import as_rgb_image
from .settings import check_resolution

logger = logging.getLogger("memo_pipeline")

REFERENCE_MODES = ("resize", "center-crop", "face-crop")


def pil_bilinear(rgb: np.ndarray, size: int) -> np.ndarray:
    """``[H, W, 3]`` float in [0, 1] -> 8-bit -> PIL bilinear resize to a square -> float ``[size, size, 3]``."""
    from PIL import Image

    pixels = np.clip(np.round(rgb * 255.0), 0, 255).astype(np.uint8)
    resized = Image.fromarray(pixels, "RGB").resize((size, size), Image.BILINEAR)
    return np.asarray(resized, dtype=np.float32) / np.float32(255.0)


def prepare_reference(image: Any, resolution: int, mode: str = "resize", *, face=None, crop_scale: float | None = None,
                      name: str = "reference image") -> torch.Tensor:
    """One picture (path-free: array, tensor, PIL image; ``[H, W, C]`` or a batch of one) ->
    ``[resolution, resolution, 3]`` float32 in [0, 1] (see ``pipeline.reference_pixels`` for the model input)."""
    resolution = check_resolution(resolution)
    if mode not in REFERENCE_MODES:
        raise ValueError(f"unknown reference mode {mode!r}; use one of {', '.join(REFERENCE_MODES)}")
    rgb = as_rgb_image(image, name)
    height, width = rgb.shape[:2]
    if mode == "face-crop":
        from .face.crop import crop_face

        if face is None:
            raise ValueError("reference mode 'face-crop' needs a detected face")
        kwargs = {"scale": crop_scale} if crop_scale else {}
        square, _ = crop_face(rgb, face, resolution=resolution, name=name, **kwargs)
        return torch.from_numpy(np.ascontiguousarray(square, dtype=np.float32))
    if mode == "center-crop":
        side = min(height, width)
        top, left = (height - side) // 2, (width - side) // 2
        rgb = rgb[top:top + side, left:left + side]
    elif height != width:
        logger.warning("%s is %dx%d: resizing it to %dx%d squashes it, as the official preprocessing does; "
                       "crop it to a square first, or use the center-crop / face-crop reference mode "
                       "(CLI: --reference-mode center-crop)", name, width, height, resolution, resolution)
    return torch.from_numpy(pil_bilinear(rgb, resolution))
