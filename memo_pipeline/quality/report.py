"""The quality report, built clip by clip: identity, sync proxy and emotion timeline.

``QualityReporter`` takes frames in chunks (a clip at a time, from the generator or from a video
file) and keeps only per-frame numbers (a few floats a frame) plus the previous frame's mouth
patch, so memory does not grow with the video beyond those numbers (a 10-minute video at 30 fps
is 18,000 frames: well under a megabyte). ``finish`` adds the audio and the emotion labels and
returns a :class:`QualityReport`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..face.errors import NoFaceError
from ..face.image import as_rgb_frames, as_rgb_image
from ..settings import num_clips
from .emotion_timeline import emotion_timeline
from .identity import cosine_similarity, linear_drift, reference_embedding
from .sync import MouthMotion, SpeechEnvelope, SyncProxyResult, envelope_flux, mouth_patch, speech_envelope, sync_proxy

SYNC_NAME = "sync proxy"


class QualityReporter:
    """Streaming analysis of a generated video against its reference face.

    ``identity_every`` scores the identity on every n-th frame only (ArcFace is the expensive
    part on a CPU); detection, and with it the mouth motion, still runs on every frame.
    """

    def __init__(self, analyzer, reference_image, fps: float, frames_per_clip: int = 16, identity_every: int = 1,
                 allow_faceless_reference: bool = False):
        if not (isinstance(fps, (int, float)) and math.isfinite(fps) and fps > 0):
            raise ValueError(f"fps must be a positive number, got {fps!r}")
        if int(frames_per_clip) < 1:
            raise ValueError(f"frames_per_clip must be at least 1, got {frames_per_clip}")
        if int(identity_every) < 1:
            raise ValueError(f"identity_every must be at least 1, got {identity_every}")
        self.analyzer = analyzer
        self.fps = float(fps)
        self.frames_per_clip = int(frames_per_clip)
        self.identity_every = int(identity_every)
        reference = as_rgb_image(reference_image, "reference image")
        try:
            self.reference, self.reference_face = reference_embedding(analyzer, reference)
        except NoFaceError:
            if not allow_faceless_reference:
                raise
            # Sync proxy and emotions need no reference face; identity then has nothing to compare with.
            self.reference, self.reference_face = None, None
        self.similarity: list[float] = []  # NaN: no face, or not scored (see `scored`)
        self.face_found: list[bool] = []
        self.scored: list[bool] = []
        self.several_faces = 0
        self.motion = MouthMotion()

    @property
    def frames(self) -> int:
        return len(self.similarity)

    def add_frames(self, frames) -> None:
        """Analyse a chunk ``[N, H, W, 3]`` (uint8 or float in [0, 1], numpy or torch), in video order."""
        chunk = as_rgb_frames(frames, "frames")
        for i in range(chunk.shape[0]):
            index = self.frames
            rgb = np.ascontiguousarray(chunk[i].cpu().numpy())
            name = f"frame {index}"
            faces = self.analyzer.detect(rgb, name)
            face = faces[0] if faces else None
            kps = None if face is None else face.kps_array()
            if len(faces) > 1:
                self.several_faces += 1
            score = math.nan
            due = index % self.identity_every == 0
            if face is not None and kps is not None and due and self.reference is not None:
                score = cosine_similarity(self.analyzer.embed(rgb, face, name), self.reference)
            self.similarity.append(score)
            self.face_found.append(face is not None and kps is not None)
            self.scored.append(due and face is not None and kps is not None and self.reference is not None)
            self.motion.add(None if kps is None else mouth_patch(rgb, kps))

    def finish(self, audio: tuple[np.ndarray, int] | SpeechEnvelope | None = None, emotion_labels=None,
               emotion_source: str = "", max_lag: int | None = None) -> "QualityReport":
        """The report; ``audio`` is (mono or [C, T] samples, sample rate) or a filled ``SpeechEnvelope``,
        ``emotion_labels`` one label per frame (may run past the video, as generation pads to clips)."""
        if self.frames == 0:
            raise ValueError("no frames were analysed")
        if max_lag is not None and int(max_lag) < 0:
            raise ValueError(f"max_lag is a number of frames and cannot be negative, got {max_lag}")
        frames, fps = self.frames, self.fps
        similarity = np.asarray(self.similarity, dtype=np.float64)
        motion = self.motion.series()
        envelope = flux = None
        sync = None
        # Default: up to 1 s, and no lag beyond a quarter of the video (too few overlapping frames there).
        lag = min(int(round(fps)), frames // 4) if max_lag is None else min(int(max_lag), max(frames - 1, 0))
        if isinstance(audio, SpeechEnvelope):
            envelope = audio.values(frames)
        elif audio is not None:
            samples, rate = audio
            samples = np.asarray(samples, dtype=np.float32)
            if samples.ndim == 2:
                samples = samples.mean(axis=0)
            envelope = speech_envelope(samples, int(rate), fps, frames)
        if envelope is not None:
            flux = envelope_flux(envelope)
            sync = sync_proxy(motion, flux, fps, lag)
        timeline = None
        if emotion_labels is not None:
            timeline = emotion_timeline(emotion_labels, fps, self.frames_per_clip, emotion_source, frames)
        return QualityReport(fps=fps, frames=frames, frames_per_clip=self.frames_per_clip,
                             identity_every=self.identity_every, similarity=similarity,
                             face_found=np.asarray(self.face_found), scored=np.asarray(self.scored),
                             several_faces=self.several_faces, motion=motion, envelope=envelope, flux=flux,
                             sync=sync, emotion=timeline, reference_face=_face_summary(self.reference_face))


@dataclass
class QualityReport:
    fps: float
    frames: int
    frames_per_clip: int
    identity_every: int
    similarity: np.ndarray  # [frames], NaN where not scored
    face_found: np.ndarray  # [frames] bool
    scored: np.ndarray  # [frames] bool
    several_faces: int
    motion: np.ndarray  # [frames] mouth motion energy, NaN where unknown
    envelope: np.ndarray | None  # [frames] speech-band RMS
    flux: np.ndarray | None  # [frames] its rate of change
    sync: SyncProxyResult | None
    emotion: dict | None
    notes: list[str] = field(default_factory=list)
    # the reference's detected face ({"score", "box"}); None: no face there, so nothing was scored
    reference_face: dict | None = field(default_factory=lambda: {"score": None, "box": None})

    @property
    def clips(self) -> int:
        return num_clips(self.frames, self.frames_per_clip)

    def identity_summary(self) -> dict:
        s = self.similarity
        scored = np.isfinite(s)
        per_clip = []
        for clip in range(self.clips):
            part = slice(clip * self.frames_per_clip, min(self.frames, (clip + 1) * self.frames_per_clip))
            values = s[part][np.isfinite(s[part])]
            per_clip.append({
                "clip": clip, "start_s": round(part.start / self.fps, 3), "frames": part.stop - part.start,
                "no_face": int((~self.face_found[part]).sum()), "scored": int(values.size),
                "mean": _r(values.mean()) if values.size else None, "min": _r(values.min()) if values.size else None,
            })
        worst = int(np.nanargmin(s)) if scored.any() else None
        times = np.arange(self.frames) / self.fps
        return {
            "metric": "cosine similarity of ArcFace embeddings, largest face of each frame vs the reference face",
            "reference_face_found": self.reference_face is not None, "reference_face": self.reference_face,
            "frames": self.frames, "frames_scored": int(scored.sum()), "frames_no_face": int((~self.face_found).sum()),
            "frames_several_faces": self.several_faces, "scored_every_n_frames": self.identity_every,
            "mean": _r(np.nanmean(s)) if scored.any() else None, "min": _r(np.nanmin(s)) if scored.any() else None,
            "min_at_frame": worst, "drift": linear_drift(times, s), "per_clip": per_clip,
        }

    def to_dict(self, series: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {
            "video": {"frames": self.frames, "fps": self.fps, "duration_s": round(self.frames / self.fps, 4),
                      "frames_per_clip": self.frames_per_clip, "clips": self.clips},
            "identity": self.identity_summary(),
            "sync_proxy": self.sync.to_dict() if self.sync is not None else {"kind": "proxy", "note": "no audio given"},
            "emotion": self.emotion if self.emotion is not None else {"note": "no emotion labels given"},
            "notes": list(self.notes),
        }
        if series:
            out["series"] = {
                "identity": _list(self.similarity),
                "mouth_motion": _list(self.motion, 5),
                "speech_envelope": None if self.envelope is None else _list(self.envelope, 5),
                "speech_flux": None if self.flux is None else _list(self.flux, 5),
            }
            if self.sync is not None:
                out["sync_proxy"]["correlation_by_lag"] = {int(k): _r(v) for k, v in zip(self.sync.lags, self.sync.r)}
        return out

    def to_json(self, series: bool = True) -> str:
        return json.dumps(self.to_dict(series), indent=2)

    def text(self) -> str:
        """A few lines for people: the three parts, each saying what it measured."""
        ident = self.identity_summary()
        lines = [f"video: {self.frames} frames at {self.fps:g} fps ({self.frames / self.fps:.2f} s), "
                 f"{self.clips} clips of {self.frames_per_clip}"]
        if self.reference_face is None:
            lines.append(f"identity: NOT SCORED: no face found in the reference image ({ident['frames_no_face']} of "
                         f"{self.frames} frames without a detected face)")
        elif ident["mean"] is None:
            lines.append(f"identity: no frame could be scored ({ident['frames_no_face']} of {self.frames} frames "
                         "without a detected face)")
        else:
            drift = ident["drift"]
            worst_clip = min((c for c in ident["per_clip"] if c["mean"] is not None), key=lambda c: c["mean"])
            slope = "" if drift["slope_per_min"] is None else \
                f", drift {drift['change']:+.3f} over the video ({drift['slope_per_min']:+.4f}/min)"
            lines.append(f"identity (ArcFace cosine to the reference): mean {ident['mean']:.3f}, min {ident['min']:.3f} "
                         f"at frame {ident['min_at_frame']}, worst clip {worst_clip['clip']} (mean "
                         f"{worst_clip['mean']:.3f}){slope}; {ident['frames_no_face']} of {self.frames} frames "
                         "without a face")
        if self.sync is None:
            lines.append(f"{SYNC_NAME}: not computed (no audio)")
        elif self.sync.peak_r is None:
            lines.append(f"{SYNC_NAME}: not computed ({self.sync.note})")
        else:
            zero = "n/a" if self.sync.r_at_zero is None else f"{self.sync.r_at_zero:.3f}"
            lines.append(f"{SYNC_NAME} (mouth motion vs speech energy, not SyncNet): peak r {self.sync.peak_r:.3f} at lag "
                         f"{self.sync.lag_frames:+d} frames ({self.sync.lag_ms:+.0f} ms; + = mouth late), r at lag 0 "
                         f"{zero}" + (f"; {self.sync.note}" if self.sync.note else ""))
        if self.emotion is None:
            lines.append("emotion: no labels given")
        else:
            parts = [f"{s['start_s']:.2f}-{s['end_s']:.2f} s {s['label']}" for s in self.emotion["segments"][:20]]
            more = len(self.emotion["segments"]) - 20
            lines.append("emotion timeline: " + "; ".join(parts) + (f"; ... {more} more" if more > 0 else ""))
            lines.append("  per clip: " + ", ".join(self.emotion["clip_labels"][: self.clips]))
        lines.extend(f"note: {n}" for n in self.notes)
        return "\n".join(lines)


def _face_summary(face) -> dict | None:
    if face is None:
        return None
    return {"score": _r(face.score), "box": [_r(v, 1) for v in face.box]}


def _r(value, digits: int = 4):
    value = float(value)
    return None if not math.isfinite(value) else round(value, digits)


def _list(values: np.ndarray, digits: int = 4) -> list:
    return [_r(v, digits) for v in np.asarray(values, dtype=np.float64)]
