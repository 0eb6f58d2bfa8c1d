"""Small pieces shared by the MEMO nodes: categories, input specs, IMAGE/AUDIO checks, error wording."""

from __future__ import annotations

import contextlib
import logging
import math
from typing import Any, Iterator

import torch

logger = logging.getLogger("comfyui-memo")

CATEGORY = "MEMO"
CATEGORY_LOADERS = "MEMO/loaders"
CATEGORY_AUDIO = "MEMO/audio"
CATEGORY_FACE = "MEMO/face"
CATEGORY_GENERATE = "MEMO/generate"

DTYPES = ["fp32", "fp16", "bf16"]


def workflow_metadata(prompt=None, extra_pnginfo=None) -> dict | None:
    """What a saved file carries so that ComfyUI restores its graph: ``extra_pnginfo``'s entries
    (the editor sends ``workflow`` there) and ``prompt``, like core's Save Video / Save Latent.
    None when there is nothing to store or ComfyUI runs with --disable-metadata."""
    from .host import get_host

    if get_host().metadata_disabled():
        return None
    metadata = {}
    if isinstance(extra_pnginfo, dict):
        metadata.update({str(key): value for key, value in extra_pnginfo.items()})
    if prompt is not None:
        metadata["prompt"] = prompt
    return metadata or None


def check_setting(value, input_name: str, setting: str | None = None):
    """`value` of the node input `input_name` against the library's input policy (`settings.LIMITS`)."""
    from ..memo_pipeline.settings import LIMITS

    return LIMITS[setting or input_name].check(value, f"input '{input_name}'")



@contextlib.contextmanager
def user_errors(what: str) -> Iterator[None]:
    """Re-raise library errors about bad input as ValueError starting with `what` (an input or node name).

    ValueError subclasses (CheckpointError, FaceImageError, AudioLoadError, ...) keep their text;
    missing files and unavailable optional parts become ValueErrors too, so that ComfyUI shows one
    readable line instead of a traceback from deep inside a library.
    """
    try:
        yield
    except ValueError as exc:
        text = str(exc)
        raise ValueError(text if text.startswith(what) else f"{what}: {text}") from exc
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError) as exc:
        raise ValueError(f"{what}: {exc}") from exc


def single_image(image: Any, input_name: str) -> torch.Tensor:
    """One IMAGE `[1, H, W, C]` (or `[H, W, C]`) as float32 `[H, W, 3]` on the CPU."""
    if not torch.is_tensor(image):
        raise ValueError(f"input '{input_name}' must be an IMAGE tensor, got {type(image).__name__}")
    if image.dim() == 4:
        if image.shape[0] != 1:
            raise ValueError(f"input '{input_name}' is a batch of {image.shape[0]} images; MEMO needs one portrait "
                             "(pick one, e.g. with an 'Image From Batch' node)")
        image = image[0]
    if image.dim() != 3 or image.shape[-1] not in (1, 3, 4):
        raise ValueError(f"input '{input_name}' must be an IMAGE [B, H, W, C], got shape {tuple(image.shape)}")
    image = image.detach().float().cpu()
    if image.shape[-1] == 1:
        image = image.expand(-1, -1, 3)
    image = image[..., :3]
    if not torch.isfinite(image).all():
        raise ValueError(f"input '{input_name}' contains NaN or infinite values")
    return image


def square_reference(image: Any, resolution: int, input_name: str = "reference_image") -> torch.Tensor:
    """The library's reference preprocessing (`prepare_reference`, official 'resize' mode): the whole
    picture resized to `[R, R, 3]` in [0, 1], as the command line and the official code do it."""
    from ..memo_pipeline.reference import prepare_reference

    picture = single_image(image, input_name)
    return prepare_reference(picture.clamp(0, 1), resolution, "resize", name=f"input '{input_name}'")


def comfy_audio(audio: Any, input_name: str) -> tuple[torch.Tensor, int]:
    """A ComfyUI AUDIO dict -> (`[channels, samples]` float32 CPU tensor, sample rate), checked."""
    if not isinstance(audio, dict) or "waveform" not in audio or "sample_rate" not in audio:
        raise ValueError(f"input '{input_name}' must be an AUDIO ({{'waveform': [B, C, T], 'sample_rate': int}}), "
                         f"got {type(audio).__name__}")
    waveform, rate = audio["waveform"], audio["sample_rate"]
    if not torch.is_tensor(waveform):
        raise ValueError(f"input '{input_name}': waveform must be a tensor, got {type(waveform).__name__}")
    if waveform.dim() == 3:
        if waveform.shape[0] != 1:
            raise ValueError(f"input '{input_name}' holds {waveform.shape[0]} tracks; MEMO needs one")
        waveform = waveform[0]
    if waveform.dim() == 1:
        waveform = waveform[None]
    if waveform.dim() != 2 or waveform.shape[0] < 1:
        raise ValueError(f"input '{input_name}': waveform must be [B, C, T], got {tuple(audio['waveform'].shape)}")
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or rate <= 0 or int(rate) != rate:
        raise ValueError(f"input '{input_name}': sample_rate must be a positive integer, got {rate!r}")
    if waveform.shape[1] == 0:
        raise ValueError(f"input '{input_name}' is empty (0 samples)")
    waveform = waveform.detach().float().cpu()
    if not torch.isfinite(waveform).all():
        raise ValueError(f"input '{input_name}' contains NaN or infinite samples")
    return waveform, int(rate)


def trim_audio(waveform: torch.Tensor, rate: int, start_s: float, duration_s: float, input_name: str) -> torch.Tensor:
    """`[C, T]` cut to `[start, start + duration)` seconds (`duration <= 0`: to the end)."""
    for name, value in (("start_seconds", start_s), ("duration_seconds", duration_s)):
        if not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number, got {value}")
    if start_s < 0:
        raise ValueError(f"start_seconds must be >= 0, got {start_s}")
    total = waveform.shape[1]
    first = int(round(start_s * rate))
    if first >= total:
        raise ValueError(f"start_seconds {start_s:g} is past the end of '{input_name}' ({total / rate:.2f} s)")
    last = total if duration_s <= 0 else min(total, first + int(round(duration_s * rate)))
    if last <= first:
        raise ValueError(f"duration_seconds {duration_s:g} selects no audio")
    return waveform[:, first:last]


def frames_to_image(frames: torch.Tensor) -> torch.Tensor:
    """Pipeline frames `(n, 3, H, W)` in [0, 1] -> IMAGE `(n, H, W, 3)` float32, contiguous."""
    return frames.detach().float().clamp(0, 1).permute(0, 2, 3, 1).contiguous().cpu()


def describe_segments(labels: torch.Tensor, seconds_per_item: float, names: tuple[str, ...]) -> str:
    """Run-length summary like '0.00-3.47 s happy; 3.47-5.00 s neutral'."""
    labels = labels.flatten().long()
    if labels.numel() == 0:
        return "(empty)"
    change = torch.nonzero(labels[1:] != labels[:-1]).flatten() + 1
    starts = [0] + change.tolist()
    ends = change.tolist() + [labels.numel()]
    parts = [f"{s * seconds_per_item:.2f}-{e * seconds_per_item:.2f} s {names[int(labels[s])]}" for s, e in zip(starts, ends)]
    if len(parts) > 40:
        parts = parts[:40] + [f"... ({len(parts) - 40} more changes)"]
    return "; ".join(parts)
