"""MEMO Quality Report: identity consistency, audio-visual sync proxy and emotion timeline of a video."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch

from . import host as host_mod
from .common import CATEGORY, comfy_audio, float_input, int_input, logger, single_image, user_errors
from .memo_types import MEMO_EMOTION, MEMO_FACE_MODEL, MemoEmotion, MemoFaceModel, expect

CATEGORY_QUALITY = f"{CATEGORY}/quality"


@dataclass
class _TrackTiming:
    """What `MemoEmotion.frame_labels` reads from a MEMO audio: the track's length and frame grid."""

    fps: float
    duration_s: float
    frames_per_clip: int

    @property
    def num_frames(self) -> int:
        return max(1, math.ceil(self.duration_s * self.fps - 1e-9))

    @property
    def padded_frames(self) -> int:
        return math.ceil(self.num_frames / self.frames_per_clip) * self.frames_per_clip


class MemoQualityReport:
    DESCRIPTION = ("Checks a generated video without watching it. Identity: ArcFace similarity of every frame's face "
                   "to the reference face (per clip, minimum, drift; frames without a face are counted). Sync PROXY: "
                   "mouth-region motion against the speech energy, cross-correlated; the lag of the peak shows an "
                   "audio/video offset (a proxy, not SyncNet). Emotion: the labels used for generation as a "
                   "timeline. Reads the frames (IMAGE) or the video file of MEMO Generate To File clip by clip.")
    CATEGORY = CATEGORY_QUALITY
    FUNCTION = "report"
    OUTPUT_NODE = True
    RETURN_TYPES = ("IMAGE", "STRING")
    RETURN_NAMES = ("plot", "summary")
    OUTPUT_TOOLTIPS = ("The report as a picture: identity over time with clip boundaries, the sync-proxy signals, "
                       "the emotion band (connect a Preview Image).",
                       "The report's numbers as JSON (see the README's 'Quality report' section).")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "face_model": (MEMO_FACE_MODEL, {"tooltip": "From MEMO Face Model Loader; needs SCRFD + ArcFace "
                                                 "(scrfd_10g_bnkps.onnx, glintr100.onnx)."}),
                "reference_image": ("IMAGE", {"tooltip": "The portrait the video was made from."}),
                "audio": ("AUDIO", {"tooltip": "The speech the video was made from (the vocals if they were "
                                    "separated), cut like the MEMO audio."}),
                "fps": float_input(30.0, 1.0, 120.0, 0.01, "Frame rate of the frames (a video file's own rate "
                                   "is used for a file)."),
                "frames_per_clip": int_input(16, 1, 64, "Frames per clip used for generation (clip boundaries, "
                                             "per-clip numbers)."),
                "identity_every": int_input(1, 1, 1000, "Score the identity on every n-th frame only (ArcFace "
                                            "is the slow part without a GPU); faces are still looked for in "
                                            "every frame."),
            },
            "optional": {
                "images": ("IMAGE", {"tooltip": "The generated frames (MEMO Sampler, or after MEMO Paste Back). "
                                     "Give these or video_path."}),
                "video_path": ("STRING", {"default": "", "tooltip": "A video file to read clip by clip instead of "
                                          "frames: connect MEMO Generate To File's video_path."}),
                "emotion": (MEMO_EMOTION, {"tooltip": "The emotion input given to the generator, for the "
                                           "emotion timeline."}),
            },
        }

    def report(self, face_model, reference_image, audio, fps=30.0, frames_per_clip=16, identity_every=1,
               images=None, video_path="", emotion=None):
        from ..memo_pipeline.quality import QualityReporter, iter_video_chunks, report_image_array, video_frame_rate
        from ..memo_pipeline.video_io import read_video_info

        model = expect(face_model, MemoFaceModel, "face_model", MEMO_FACE_MODEL)
        if not model.can_embed:
            raise ValueError(f"input 'face_model': '{model.name}' has no identity network; the report needs "
                             "scrfd_10g_bnkps.onnx + glintr100.onnx")
        if not (isinstance(fps, (int, float)) and math.isfinite(fps) and fps > 0):
            raise ValueError(f"input 'fps' must be a positive number, got {fps!r}")
        frames_per_clip, identity_every = int(frames_per_clip), int(identity_every)
        if not 1 <= frames_per_clip <= 64 or identity_every < 1:
            raise ValueError("inputs 'frames_per_clip' (1..64) and 'identity_every' (>= 1) are out of range")
        path = (video_path or "").strip() if isinstance(video_path, str) else video_path
        if (images is None) == (not path):
            raise ValueError("connect either 'images' or 'video_path' (one of them, not both)")
        if images is not None and (not torch.is_tensor(images) or images.dim() != 4):
            raise ValueError(f"input 'images' must be an IMAGE batch [N, H, W, C], got {getattr(images, 'shape', type(images))}")
        reference = single_image(reference_image, "reference_image")
        waveform, rate = comfy_audio(audio, "audio")
        notes = []
        total = images.shape[0] if images is not None else 0
        if path:
            if not os.path.isfile(path):
                raise ValueError(f"input 'video_path': no such file: {path}")
            with user_errors("video_path"):
                file_fps = video_frame_rate(path)
                total = read_video_info(path)["frames"]
            if abs(file_fps - float(fps)) > 1e-2:
                notes.append(f"the video file runs at {file_fps:g} fps; that rate is used, not the fps input ({fps:g})")
            fps = file_fps

        host = host_mod.get_host()
        with user_errors("reference_image"):
            reporter = QualityReporter(model.analyzer, reference.numpy(), float(fps), frames_per_clip, identity_every)
        bar = host.progress(max(1, total))
        chunks = iter_video_chunks(path, frames_per_clip) if path else images.split(frames_per_clip)
        with user_errors("video_path" if path else "images"):
            for chunk in chunks:
                host.check_interrupt()
                reporter.add_frames(chunk)
                bar.set(reporter.frames)

        labels, source = None, ""
        if emotion is not None:
            track = expect(emotion, MemoEmotion, "emotion", MEMO_EMOTION)
            timing = _TrackTiming(float(fps), waveform.shape[1] / rate, frames_per_clip)
            with user_errors("emotion"):
                labels = track.frame_labels(timing)  # type: ignore[arg-type] - reads fps, duration, padded frames
            source = track.kind
        report = reporter.finish((waveform.numpy(), rate), labels, source)
        report.notes.extend(notes)
        if emotion is None:
            report.notes.append("no emotion input: no emotion timeline")
        logger.info("MEMO quality report:\n%s", report.text())
        plot = torch.from_numpy(report_image_array(report))[None].contiguous()
        summary = report.to_json(series=False)
        return {"ui": {"text": [report.text()]}, "result": (plot, summary)}


NODE_CLASSES = {
    "MemoQualityReport": (MemoQualityReport, "MEMO Quality Report"),
}
