"""Image operations shared by the face tools, the reference preprocessing and the nodes.

Where OpenCV is importable (most ComfyUI installs have it; it is not a requirement) the 8-bit
operations that insightface runs with OpenCV (`cv2.resize`, `cv2.warpAffine`, both bilinear in
fixed point) are done by the same calls, so the detector and ArcFace see exactly the pixels they
see in MEMO's own preprocessing. Without OpenCV a float implementation of the same sampling is
used; it differs from OpenCV's fixed-point arithmetic by about one 8-bit level on some pixels
(enough to move a landmark by a fraction of a pixel and an embedding by below 1 %).
"""

from __future__ import annotations

import os

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


def opencv():
    """The `cv2` module, or None where it is missing (or `MEMO_NO_OPENCV=1` asks for the fallback)."""
    if os.environ.get("MEMO_NO_OPENCV") == "1":
        return None
    try:
        import cv2
    except ImportError:
        return None
    return cv2


def to_8bit(image: np.ndarray) -> np.ndarray:
    """``[0, 1]`` floats -> uint8, rounded (what an 8-bit picture holds)."""
    return np.clip(np.rint(np.asarray(image, dtype=np.float32) * 255.0), 0, 255).astype(np.uint8)


def resize_8bit_linear(pixels: np.ndarray, height: int, width: int) -> np.ndarray:
    """uint8 ``[H, W, C]`` -> float32 0..255 integers, bilinear as `cv2.resize` (INTER_LINEAR)."""
    cv2 = opencv()
    if cv2 is not None:
        return cv2.resize(np.ascontiguousarray(pixels), (width, height), interpolation=cv2.INTER_LINEAR).astype(np.float32)
    return np.clip(np.rint(resize_like_cv2_linear(pixels.astype(np.float32), height, width)), 0, 255)
