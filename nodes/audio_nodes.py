"""Audio nodes: wav2vec2 features, emotion detection and schedules, vocal separation."""

from __future__ import annotations

import logging
import warnings

import numpy as np
import torch

from . import host as host_mod
from .common import check_setting, comfy_audio, describe_segments, logger, trim_audio, user_errors
from .loaders import resolve_choice
from .memo_types import (
    MEMO_AUDIO,
    MEMO_AUDIO_ENCODER,
    MEMO_EMOTION_MODEL,
    MemoAudio,
    MemoAudioEncoder,
    MemoEmotion,
    MemoEmotionModel,
    expect,
)



def fraction_progress(host, resolution: int = 100):
    """A `fraction -> None` callback for long audio steps: moves a progress bar, honours Cancel."""
    bar = host.progress(resolution)

    def report(fraction: float) -> None:
        bar.set(round(fraction * resolution))
        host.check_interrupt()

    return report

class MemoAudioEncode:
    """The work of MEMO Audio Encode; its inputs and outputs are declared in comfy_nodes.py."""

    def encode(self, audio_encoder, audio, fps=30.0, frames_per_clip=16, start_seconds=0.0, duration_seconds=0.0):
        from ..memo_pipeline.audio.features import extract_audio_features
        from ..memo_pipeline.audio.io import load_audio

        encoder = expect(audio_encoder, MemoAudioEncoder, "audio_encoder", MEMO_AUDIO_ENCODER)
        fps = check_setting(fps, "fps")
        frames_per_clip = check_setting(frames_per_clip, "frames_per_clip")
        waveform, rate = comfy_audio(audio, "audio")
        source_samples = waveform.shape[1]
        waveform = trim_audio(waveform, rate, float(start_seconds), float(duration_seconds), "audio")
        cut_start = int(round(float(start_seconds) * rate))  # where trim_audio started
        with user_errors("audio"):
            clip = load_audio({"waveform": waveform[None], "sample_rate": rate, "filename": "audio"})
        shortest = max(encoder.receptive_field / clip.sample_rate, 1.0 / float(fps))
        if clip.duration_s < shortest:
            raise ValueError(f"audio: {clip.duration_s * 1000:.0f} ms is too short; MEMO needs at least "
                             f"{shortest * 1000:.0f} ms (one video frame, and the wav2vec2 window)")
        host = host_mod.get_host()
        host.load_to_device(encoder.networks())
        with user_errors("audio"):
            features = extract_audio_features(encoder.encoder, clip, fps=float(fps), frames_per_clip=int(frames_per_clip),
                                              on_progress=fraction_progress(host))
        memo_audio = MemoAudio(features, int(frames_per_clip), waveform, rate, encoder.name, cut_start, source_samples)
        trimmed = {"waveform": waveform[None].contiguous(), "sample_rate": rate}
        logger.info("MEMO audio: %.2f s -> %d frames at %g fps (%d clips of %d)", features.duration_s,
                    features.num_frames, fps, memo_audio.num_clips, frames_per_clip)
        return (memo_audio, trimmed, int(features.num_frames), float(fps))


class MemoEmotionDetect:
    """The work of MEMO Emotion Detect; its inputs and outputs are declared in comfy_nodes.py."""

    def detect(self, emotion_model, audio):
        from ..memo_pipeline.audio.emotion_detect import emotion_windows, sample_emotion_labels
        from ..memo_pipeline.audio.emotions import EMOTION_LABELS
        from ..memo_pipeline.audio.io import load_audio

        model = expect(emotion_model, MemoEmotionModel, "emotion_model", MEMO_EMOTION_MODEL)
        waveform, rate = comfy_audio(audio, "audio")
        with user_errors("audio"):
            clip = load_audio({"waveform": waveform[None], "sample_rate": rate, "filename": "audio"})
        samples = torch.from_numpy(clip.samples)
        if samples.numel() < model.backbone.min_input_samples:
            raise ValueError(f"audio: {samples.numel() / clip.sample_rate * 1000:.0f} ms is too short for emotion "
                             f"detection (needs {model.backbone.min_input_samples} samples at 16 kHz)")
        host = host_mod.get_host()
        host.load_to_device([model.backbone, model.classifier])
        bar = host.progress(len(emotion_windows(samples.numel())))

        def progress(done, total):
            bar.set(done)
            host.check_interrupt()

        with user_errors("audio"):
            labels = sample_emotion_labels(samples, model.backbone, model.classifier, on_window=progress).to(torch.int8)
        summary = describe_segments(labels[:: clip.sample_rate // 100], 0.01, EMOTION_LABELS)
        return (MemoEmotion("detected", sample_labels=labels, duration_s=clip.duration_s, summary=summary), summary)


class MemoEmotionSchedule:
    """The work of MEMO Emotion Schedule; its inputs and outputs are declared in comfy_nodes.py."""

    def schedule(self, memo_audio, schedule):
        from ..memo_pipeline.audio.emotions import EMOTION_LABELS, schedule_frame_labels

        audio = expect(memo_audio, MemoAudio, "memo_audio", MEMO_AUDIO)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with user_errors("schedule"):
                labels = schedule_frame_labels(schedule, audio.num_frames, audio.fps)
        notes = [str(w.message) for w in caught]
        for note in notes:
            logger.warning("MEMO emotion schedule: %s", note)
        summary = describe_segments(labels, 1.0 / audio.fps, EMOTION_LABELS)
        if notes:
            summary += "\n" + "\n".join(notes)
        return (MemoEmotion("schedule", schedule=schedule, summary=summary), summary)


class MemoVocalSeparation:
    """The work of MEMO Vocal Separation; its inputs and outputs are declared in comfy_nodes.py."""

    def separate(self, audio, model, peak_normalize=True, order="official"):
        from ..memo_pipeline.audio.separation import MDXVocalSeparator, VocalSeparationUnavailable

        waveform, rate = comfy_audio(audio, "audio")
        if waveform.shape[0] > 2:
            raise ValueError(f"audio: vocal separation takes mono or stereo, got {waveform.shape[0]} channels")
        path = resolve_choice(model, "model", (host_mod.VOCAL_FOLDER, host_mod.MEMO_FOLDER), "file")
        host = host_mod.get_host()
        host.check_interrupt()
        try:
            separator = MDXVocalSeparator(path)
            with user_errors("audio"):
                if order == "official":  # the library's official order: separate the 16 kHz 16-bit track
                    from ..memo_pipeline.audio.io import separate_vocals_like_memo

                    clip = separate_vocals_like_memo({"waveform": waveform[None], "sample_rate": rate}, separator,
                                                     "official", peak_normalize=bool(peak_normalize),
                                                     on_progress=fraction_progress(host))
                    stem, rate = clip.channels, clip.sample_rate
                else:
                    stem = separator.separate(waveform.numpy(), rate, peak_normalize=bool(peak_normalize),
                                              on_progress=fraction_progress(host))
        except VocalSeparationUnavailable as exc:
            raise ValueError(f"vocal separation unavailable: {exc}. Without it, connect the audio straight to MEMO "
                             "Audio Encode.") from exc
        stem = torch.from_numpy(np.ascontiguousarray(stem, dtype=np.float32))
        logging.getLogger("comfyui-memo").info("MEMO vocal separation: %d samples at %d Hz", stem.shape[-1], rate)
        return ({"waveform": stem[None], "sample_rate": rate},)


IMPLEMENTATIONS = {  # node id -> (class doing the work, its method); nodes/comfy_nodes.py declares them
    "MemoAudioEncode": (MemoAudioEncode, "encode"),
    "MemoEmotionDetect": (MemoEmotionDetect, "detect"),
    "MemoEmotionSchedule": (MemoEmotionSchedule, "schedule"),
    "MemoVocalSeparation": (MemoVocalSeparation, "separate"),
}
