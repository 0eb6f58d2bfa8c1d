"""The input policy: every generation setting's default and allowed range, in one table.

`GenerationSettings.validate`, the command line and the ComfyUI nodes (their widgets' default,
min, max and step, and their checks) all read `LIMITS`, so a value is accepted or refused the same
way wherever it comes from. Also here: the one resolution rule and the one clip count.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Integral, Real
from typing import Any

MAX_SEED = 2**64 - 1  # the largest seed torch's generator (and ComfyUI) takes


@dataclass(frozen=True)
class Limit:
    """A number's default and closed range; `step` is the widget step (and, for resolution, the
    multiple the value must be)."""

    default: int | float
    minimum: int | float
    maximum: int | float
    step: int | float = 1
    integer: bool = True
    multiple: int = 1  # the value must be a multiple of this (resolution: the VAE's 8-pixel blocks)
    why: str = ""

    def problem(self, value: Any, name: str) -> str | None:
        """Why `value` is refused (one line naming `name`), or None when it is allowed."""
        allowed = f"{'a whole number' if self.integer else 'a number'} in {self.minimum}..{self.maximum}"
        if self.why:
            allowed += f"; {self.why}"
        if isinstance(value, bool) or not isinstance(value, Integral if self.integer else Real) or (
                not self.integer and not math.isfinite(value)):
            return f"{name} must be {allowed}, got {value!r}"
        if self.multiple > 1 and value % self.multiple:
            return f"{name} {value!r} is not a multiple of {self.multiple} ({allowed})"
        if value < self.minimum:
            return f"{name} must be >= {self.minimum} ({allowed}), got {value!r}"
        if value > self.maximum:
            return f"{name} must be <= {self.maximum} ({allowed}), got {value!r}"
        return None

    def check(self, value: Any, name: str) -> int | float:
        """`value` as int/float when allowed, else a ValueError naming `name`."""
        problem = self.problem(value, name)
        if problem:
            raise ValueError(problem)
        return int(value) if self.integer else float(value)


LIMITS: dict[str, Limit] = {
    "steps": Limit(20, 1, 200, why="denoising steps per clip; 20 in MEMO"),
    "guidance_scale": Limit(3.5, 0.0, 20.0, 0.1, integer=False),
    "frames_per_clip": Limit(16, 1, 64, why="16 in MEMO"),
    "past_frames": Limit(16, 1, 64, why="16 in MEMO"),
    "seed": Limit(42, 0, MAX_SEED, why="2**64 - 1 is the largest, as in ComfyUI"),
    "fps": Limit(30.0, 1.0, 120.0, 0.01, integer=False),
    "resolution": Limit(512, 8, 2048, 8, multiple=8, why="a positive multiple of 8: the VAE works in 8-pixel blocks"),
    "max_clips": Limit(0, 0, 100000, why="0 = until the audio ends"),
    "crf": Limit(18, 0, 51, why="H.264 quality, lower is better"),
}


def check_resolution(resolution: Any, name: str = "resolution") -> int:
    """The one resolution rule: a side every network of MEMO can run (see `LIMITS['resolution']`)."""
    return LIMITS["resolution"].check(resolution, name)


def num_clips(num_frames: int, frames_per_clip: int) -> int:
    """How many clips cover `num_frames` video frames (the last one may be partly past the audio)."""
    return math.ceil(num_frames / frames_per_clip)
