"""Emotion labels: names, manual schedules and per-frame / per-clip label tracks.

MEMO conditions every clip on one emotion index. The index comes from a small
classifier on emotion2vec features, whose 9 outputs follow emotion2vec's own
label order. Sources for the order below:

* emotion2vec_plus_large / emotion2vec_plus_base ``tokens.txt`` on Hugging Face:
  ``angry, disgusted, fearful, happy, neutral, other, sad, surprised, <unk>``
  (one per line, Chinese/English pairs).
* The MEMO maintainers' answer in memoavatar/memo issue #23 (2024-12-16), which
  gives the same mapping 0..8 with ``unknown`` for ``<unk>``.

Index 9 is not a class: it is the extra row of the emotion embedding tables that
the pipeline uses as the unconditional (classifier-free guidance) emotion.
(Issue #32 of the same repository notes that the released model does not follow
a manually chosen emotion reliably for every portrait; a schedule is a hint.)

Schedule syntax (``parse_emotion_schedule``)::

    happy                          one label for the whole track
    0:neutral, 3.5:happy, 8:sad    change points in seconds
    0f:neutral, 48f:happy          change points in video frames (``f`` suffix)

Entries are separated by commas, semicolons or new lines; times are seconds (an
optional ``s`` suffix is allowed) or frames with an ``f`` suffix, and may be mixed. The first entry must start at 0 and start times must strictly
increase. A change at ``t`` seconds takes effect at the first frame shown at or
after ``t``, i.e. frame ``ceil(t * fps)``. Names are case-insensitive; the
indices 0-8 are accepted as well.
"""

from __future__ import annotations

import math
import re
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F

EMOTION_LABELS: tuple[str, ...] = (
    "angry",
    "disgusted",
    "fearful",
    "happy",
    "neutral",
    "other",
    "sad",
    "surprised",
    "unknown",
)
NUM_EMOTION_CLASSES = len(EMOTION_LABELS)
UNCONDITIONAL_EMOTION = NUM_EMOTION_CLASSES  # the extra embedding row used for CFG

_ALIASES = {"<unk>": "unknown", "unk": "unknown"}


def _valid_labels_text() -> str:
    return ", ".join(f"{i}={name}" for i, name in enumerate(EMOTION_LABELS))


def emotion_index(label: str | int) -> int:
    """Return the class index of an emotion name (or index), or raise naming the valid ones."""
    if isinstance(label, bool):
        raise ValueError(f"emotion label must be a name or an index, got {label!r}")
    if isinstance(label, int):
        if 0 <= label < NUM_EMOTION_CLASSES:
            return label
        raise ValueError(f"emotion index {label} out of range; valid labels: {_valid_labels_text()}")
    key = str(label).strip().lower()
    key = _ALIASES.get(key, key)
    if key.isdigit():
        return emotion_index(int(key))
    if key in EMOTION_LABELS:
        return EMOTION_LABELS.index(key)
    raise ValueError(f"unknown emotion label {label!r}; valid labels: {_valid_labels_text()}")


@dataclass(frozen=True)
class ScheduleEntry:
    """One change point: ``label`` starts at ``time`` (seconds, or frames if ``in_frames``)."""

    time: float
    in_frames: bool
    label: int

    def start_frame(self, fps: float) -> int:
        if self.in_frames:
            return int(self.time)
        # The small slack keeps e.g. 3.5 s at 30 fps on frame 105 despite float rounding.
        return max(0, math.ceil(self.time * fps - 1e-6))


_TIME_RE = re.compile(r"^(?P<num>[+-]?(\d+(\.\d*)?|\.\d+))\s*(?P<unit>f|s)?$", re.IGNORECASE)


def parse_emotion_schedule(text: str) -> list[ScheduleEntry]:
    """Parse a single label or a ``time:label`` list (see module docstring) into entries."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"emotion schedule is empty; give a label or 'time:label' pairs ({_valid_labels_text()})")
    parts = [p.strip() for p in re.split(r"[,;\n]", text) if p.strip()]
    if len(parts) == 1 and ":" not in parts[0]:
        return [ScheduleEntry(0.0, False, emotion_index(parts[0]))]

    entries: list[ScheduleEntry] = []
    for part in parts:
        if ":" not in part:
            raise ValueError(
                f"emotion schedule entry {part!r} has no 'time:' prefix; "
                "use e.g. '0:neutral, 3.5:happy' (seconds) or '48f:happy' (frames)"
            )
        time_text, label_text = (s.strip() for s in part.split(":", 1))
        match = _TIME_RE.match(time_text)
        if match is None:
            raise ValueError(f"bad time {time_text!r} in emotion schedule entry {part!r}; use seconds like 3.5 or frames like 48f")
        value = float(match.group("num"))
        in_frames = (match.group("unit") or "").lower() == "f"
        if value < 0:
            raise ValueError(f"negative time in emotion schedule entry {part!r}")
        if in_frames and value != int(value):
            raise ValueError(f"frame number must be an integer in emotion schedule entry {part!r}")
        entries.append(ScheduleEntry(value, in_frames, emotion_index(label_text)))
    return entries


def schedule_frame_labels(schedule: str | list[ScheduleEntry], num_frames: int, fps: float) -> torch.Tensor:
    """Per-frame labels ``LongTensor[num_frames]`` for a manual emotion schedule.

    Entries whose start lies past the last frame have no effect (a warning says so).
    """
    if num_frames <= 0:
        raise ValueError(f"num_frames must be positive, got {num_frames}")
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    entries = parse_emotion_schedule(schedule) if isinstance(schedule, str) else list(schedule)
    if not entries:
        raise ValueError("emotion schedule has no entries")
    starts = [e.start_frame(fps) for e in entries]
    if starts[0] != 0:
        raise ValueError(
            f"emotion schedule must start at time 0 (first entry starts at frame {starts[0]}); "
            "add e.g. '0:neutral' in front"
        )
    for prev, cur, entry in zip(starts, starts[1:], entries[1:]):
        if cur <= prev:
            raise ValueError(
                f"emotion schedule times must strictly increase (in frames at {fps:g} fps): "
                f"entry at {entry.time:g}{'f' if entry.in_frames else 's'} starts at frame {cur}, "
                f"not after frame {prev}"
            )
    late = [e for e, s in zip(entries, starts) if s >= num_frames]
    if late:
        warnings.warn(
            f"{len(late)} emotion schedule entries start after the last frame ({num_frames} frames) and are ignored",
            stacklevel=2,
        )
    labels = torch.empty(num_frames, dtype=torch.long)
    bounds = starts[1:] + [num_frames]
    for entry, start, end in zip(entries, starts, bounds):
        labels[min(start, num_frames) : min(end, num_frames)] = entry.label
    return labels


def _check_labels(labels: torch.Tensor, what: str) -> torch.Tensor:
    if not isinstance(labels, torch.Tensor) or labels.ndim != 1:
        raise ValueError(f"{what} must be a 1-D tensor, got {getattr(labels, 'shape', type(labels))}")
    if labels.dtype.is_floating_point or labels.dtype == torch.bool or labels.is_complex():
        raise ValueError(f"{what} must be integer labels, got dtype {labels.dtype}")
    if labels.numel() == 0:
        raise ValueError(f"{what} is empty")
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= NUM_EMOTION_CLASSES:
        raise ValueError(f"{what} has values in [{low}, {high}]; valid labels: {_valid_labels_text()}")
    return labels.long()


def frame_labels_from_sample_labels(sample_labels: torch.Tensor, num_frames: int) -> torch.Tensor:
    """Resize a per-sample label track to ``num_frames`` the way MEMO does (nearest neighbour).

    Uses ``F.interpolate(mode="nearest")`` on the float labels so the picked
    sample for each frame is exactly the official one.
    """
    labels = _check_labels(sample_labels, "sample_labels")
    if num_frames <= 0:
        raise ValueError(f"num_frames must be positive, got {num_frames}")
    resized = F.interpolate(labels.float()[None, None], size=int(num_frames), mode="nearest")
    return resized[0, 0].round().long()


def clip_labels(frame_labels: torch.Tensor, frames_per_clip: int) -> torch.Tensor:
    """One label per clip: the most frequent frame label, ties going to the smallest index.

    This is what ``torch.mode`` gives in the official pipeline; counting explicitly
    keeps the tie rule independent of the backend.
    """
    labels = _check_labels(frame_labels, "frame_labels")
    if frames_per_clip <= 0:
        raise ValueError(f"frames_per_clip must be positive, got {frames_per_clip}")
    if labels.numel() % frames_per_clip:
        raise ValueError(
            f"frame_labels has {labels.numel()} frames, not a multiple of frames_per_clip={frames_per_clip}; "
            "pad the label track to whole clips first"
        )
    return _vote(labels.view(-1, frames_per_clip))


def clip_emotion(labels: torch.Tensor) -> int:
    """The label of one clip: the most frequent of its frame labels, ties going to the smallest.

    The pipeline conditions each clip on this single label (`torch.mode` in the official code).
    """
    return int(_vote(labels.long().flatten()[None])[0])


def _vote(per_clip: torch.Tensor) -> torch.Tensor:
    """`(clips, frames)` labels -> `(clips,)` most frequent label per row, the smallest on ties."""
    counts = F.one_hot(per_clip, NUM_EMOTION_CLASSES).sum(dim=1)
    return counts.argmax(dim=1)  # argmax returns the first maximum, i.e. the smallest label
