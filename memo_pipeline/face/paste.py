"""Pasting generated square frames back into the original picture (or video), chunk by chunk.

Each generated frame is resized from the generation resolution back to the crop square and
blended over the original with a mask that fades to the original near the square's edges. Edges
of the square that coincide with (or lie beyond) the image border are not faded: there is no
original content beyond them to fade to. Optional colour matching shifts each generated frame's
per-channel mean and spread to those of the original crop, which removes the slow colour drift
diffusion models tend to have.

Frames are consumed and produced in chunks, so a video of thousands of frames never sits in
memory at once; each output chunk is a float32 tensor ``[n, H, W, 3]`` in [0, 1].
"""

from __future__ import annotations

from itertools import islice
from typing import Any, Iterable, Iterator

import numpy as np
import torch

from .crop import CropInfo, crop_with_info
from .errors import FaceImageError
from .image import as_rgb_frames, as_rgb_image
from ..image_ops import resize_frames

DEFAULT_FEATHER = 0.1
DEFAULT_CHUNK = 16
# Colour matching may at most halve or double a channel's spread; beyond that the generated
# frame is more likely flat (e.g. a fade) than miscoloured.
_MAX_SPREAD_RATIO = 2.0


def feather_mask(info: CropInfo, feather: float = DEFAULT_FEATHER) -> torch.Tensor:
    """Blend weights ``[h, w]`` over the visible part of the crop square (1 = generated pixel).

    Each inner edge fades over ``feather * size`` pixels with a smoothstep ramp; the weight is
    the product of the horizontal and vertical ramps.
    """
    if not 0.0 <= feather <= 0.5:
        raise ValueError(f"feather must be between 0 and 0.5 of the crop size, got {feather}")
    x1, y1, x2, y2 = info.visible_box()  # type: ignore[misc]
    width = feather * info.size

    def ramp(start: int, stop: int, origin: int, fade_low: bool, fade_high: bool) -> torch.Tensor:
        position = torch.arange(start, stop, dtype=torch.float64) - origin + 0.5
        weight = torch.ones_like(position)
        if width > 0:
            if fade_low:
                weight = torch.minimum(weight, position / width)
            if fade_high:
                weight = torch.minimum(weight, (info.size - position) / width)
        weight = weight.clamp(0.0, 1.0)
        return (weight * weight * (3 - 2 * weight)).float()

    horizontal = ramp(x1, x2, info.x0, info.x0 > 0, info.x0 + info.size < info.image_width)
    vertical = ramp(y1, y2, info.y0, info.y0 > 0, info.y0 + info.size < info.image_height)
    return vertical[:, None] * horizontal[None, :]


def match_colors(frames: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Give each frame ``[n, R, R, 3]`` the per-channel mean and spread of ``reference``."""
    dims = (1, 2)
    mean, std = frames.mean(dim=dims, keepdim=True), frames.std(dim=dims, keepdim=True)
    ref = reference if reference.ndim == 4 else reference[None]
    ref_mean, ref_std = ref.mean(dim=dims, keepdim=True), ref.std(dim=dims, keepdim=True)
    ratio = (ref_std / std.clamp_min(1e-6)).clamp(1 / _MAX_SPREAD_RATIO, _MAX_SPREAD_RATIO)
    return ((frames - mean) * ratio + ref_mean).clamp_(0.0, 1.0)


def paste_back(
    frames: Any,
    crop_info: CropInfo,
    original: Any,
    feather: float = DEFAULT_FEATHER,
    color_match: bool = False,
    chunk_size: int = DEFAULT_CHUNK,
) -> Iterator[torch.Tensor]:
    """Yield the original with each generated frame pasted in, ``chunk_size`` frames at a time.

    ``frames``: a tensor/array ``[N, R, R, C]`` or any iterable of frames ``[R, R, C]`` or
    chunks ``[n, R, R, C]`` (uint8 or float in [0, 1]); R must be the crop info's resolution.
    ``original``: the picture the crop came from (one image), or its video as a ``[N, H, W, C]``
    tensor/array or an iterable of frames/chunks, consumed in step with ``frames``.
    Output chunks live on the device of the generated frames.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
    mask = feather_mask(crop_info, feather)  # validates feather before any frame is read
    if _is_single_image(original):
        original_rgb = as_rgb_image(original, "original image")
        _check_original_size(original_rgb.shape[0], original_rgb.shape[1], crop_info, "original image")
        return _paste_onto_image(frames, crop_info, original_rgb, mask, color_match, chunk_size)
    return _paste_onto_video(frames, crop_info, original, mask, color_match, chunk_size)


def _is_single_image(original: Any) -> bool:
    if isinstance(original, (np.ndarray, torch.Tensor)):
        return original.ndim < 4 or original.shape[0] == 1
    return type(original).__module__.startswith("PIL.")


def _paste_onto_image(frames, info, original_rgb, mask, color_match, chunk_size) -> Iterator[torch.Tensor]:
    base = torch.from_numpy(original_rgb)
    reference = torch.from_numpy(crop_with_info(original_rgb, info, "original image")) if color_match else None
    for chunk in _chunks(frames, chunk_size, "generated frames"):
        _check_generated(chunk, info)
        device = chunk.device
        canvas = base.to(device)[None].repeat(chunk.shape[0], 1, 1, 1)
        ref = None if reference is None else reference.to(device)
        yield _blend(canvas, chunk, info, mask.to(device), ref)


def _paste_onto_video(frames, info, original, mask, color_match, chunk_size) -> Iterator[torch.Tensor]:
    originals = _frame_stream(original, "original video")
    done = 0
    for chunk in _chunks(frames, chunk_size, "generated frames"):
        _check_generated(chunk, info)
        needed = chunk.shape[0]
        taken = list(islice(originals, needed))
        if len(taken) < needed:
            raise FaceImageError(
                f"original video ended after {done + len(taken)} frames but there are more generated frames"
            )
        canvas = torch.stack(taken).to(chunk.device)
        _check_original_size(canvas.shape[1], canvas.shape[2], info, "original video")
        reference = None
        if color_match:
            reference = torch.stack([torch.from_numpy(crop_with_info(frame.cpu().numpy(), info, "original video frame")) for frame in taken])
            reference = reference.to(chunk.device)
        yield _blend(canvas, chunk, info, mask.to(chunk.device), reference)
        done += needed


def _blend(canvas: torch.Tensor, generated: torch.Tensor, info: CropInfo, mask: torch.Tensor, reference) -> torch.Tensor:
    if reference is not None:
        generated = match_colors(generated, reference)
    square = resize_frames(generated, info.size, info.size)
    x1, y1, x2, y2 = info.visible_box()  # type: ignore[misc]
    patch = square[:, y1 - info.y0 : y2 - info.y0, x1 - info.x0 : x2 - info.x0]
    under = canvas[:, y1:y2, x1:x2]
    under += (patch - under).mul_(mask[None, :, :, None])  # a view: writes into the canvas
    return canvas


def _check_generated(chunk: torch.Tensor, info: CropInfo) -> None:
    if chunk.shape[1:3] != (info.resolution, info.resolution):
        raise FaceImageError(
            f"generated frames are {chunk.shape[2]}x{chunk.shape[1]} but the crop was made at "
            f"{info.resolution}x{info.resolution}"
        )


def _check_original_size(height: int, width: int, info: CropInfo, name: str) -> None:
    if (height, width) != (info.image_height, info.image_width):
        raise FaceImageError(
            f"{name} is {width}x{height} but the crop info was made for {info.image_width}x{info.image_height}"
        )


def _frame_stream(source: Any, name: str) -> Iterator[torch.Tensor]:
    """Single frames ``[H, W, 3]`` from a batch or from an iterable of frames or chunks, lazily."""
    if isinstance(source, (np.ndarray, torch.Tensor)):
        if source.ndim != 4:
            raise FaceImageError(f"{name}: expected [N, H, W, C] frames, got shape {tuple(source.shape)}")
        for index in range(source.shape[0]):
            yield as_rgb_frames(source[index : index + 1], name)[0]
        return
    if not isinstance(source, Iterable):
        raise FaceImageError(f"{name}: expected frames as a tensor, an array or an iterable, got {type(source).__name__}")
    for item in source:
        yield from as_rgb_frames(item, name)


def _chunks(source: Any, size: int, name: str) -> Iterator[torch.Tensor]:
    """Stacks of at most ``size`` frames, reading no more of ``source`` than the stack needs."""
    if isinstance(source, (np.ndarray, torch.Tensor)) and source.ndim == 4:
        for start in range(0, source.shape[0], size):
            yield as_rgb_frames(source[start : start + size], name)
        return
    stream = _frame_stream(source, name)
    while True:
        batch = list(islice(stream, size))
        if not batch:
            return
        yield torch.stack(batch)
