"""Resampling of images and frame batches (torch, so it runs wherever the frames live)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def resize_like_cv2_linear(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Plain bilinear resize (pixel-centre aligned, no anti-aliasing) of ``[H, W, C]``.

    This is the sampling of OpenCV's ``INTER_LINEAR`` that the SCRFD reference preprocessing
    uses; matching it keeps detections close to the official ones, aliasing included.
    """
    if image.shape[0] == height and image.shape[1] == width:
        return image.copy()
    tensor = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)).permute(2, 0, 1)[None]
    out = F.interpolate(tensor, size=(height, width), mode="bilinear", align_corners=False, antialias=False)
    return out[0].permute(1, 2, 0).numpy()


def resize_frames(frames: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """High-quality resize of ``[N, H, W, C]`` float frames in [0, 1].

    Bicubic, anti-aliased when shrinking (so detail does not alias into moiré), clamped back to
    [0, 1] because the cubic kernel overshoots at edges.
    """
    if frames.shape[1] == height and frames.shape[2] == width:
        return frames
    shrinking = height < frames.shape[1] or width < frames.shape[2]
    channels_first = frames.permute(0, 3, 1, 2)
    out = F.interpolate(channels_first, size=(height, width), mode="bicubic", align_corners=False, antialias=shrinking)
    return out.clamp_(0.0, 1.0).permute(0, 2, 3, 1)
