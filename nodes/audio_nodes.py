"""Audio nodes: wav2vec2 features, emotion detection and schedules, vocal separation."""

from __future__ import annotations

import logging
import math
import warnings

import numpy as np
import torch

from . import host as host_mod
from .common import (
    CATEGORY_AUDIO,
    combo,
    comfy_audio,
    describe_segments,
    float_input,
    int_input,
    logger,
    trim_audio,
    user_errors,
)
from .loaders import VOCAL_SUBPATH, choices_or_hint, resolve_choice, vocal_model_choices
from .memo_types import (
    MEMO_AUDIO,
    MEMO_AUDIO_ENCODER,
    MEMO_EMOTION,
    MEMO_EMOTION_MODEL,
    MemoAudio,
    MemoAudioEncoder,
    MemoEmotion,
    MemoEmotionModel,
    expect,
)

MAX_FRAMES_PER_CLIP = 64



def fraction_progress(host, resolution: int = 100):
    """A `fraction -> None` callback for long audio steps: moves a progress bar, honours Cancel."""
    bar = host.progress(resolution)

    def report(fraction: float) -> None:
        bar.set(round(fraction * resolution))
        host.check_interrupt()

    return report

class MemoAudioEncode:
    DESCRIPTION = ("Turns an AUDIO track into MEMO's speech features: wav2vec2 layer outputs resampled to the "
                   "video frame rate, padded to whole clips, as the official preprocessing does. Optionally cuts a "
                   "part of the track first; the cut AUDIO comes out again for muxing and emotion detection.")
    CATEGORY = CATEGORY_AUDIO
    FUNCTION = "encode"
    RETURN_TYPES = (MEMO_AUDIO, "AUDIO", "INT", "FLOAT")
    RETURN_NAMES = ("memo_audio", "audio", "frame_count", "fps")
    OUTPUT_TOOLTIPS = (
        "Speech features for MEMO Sampler / MEMO Generate To File.",
        "The (cut) audio the features were made from: mux it with the video and feed it to MEMO Emotion Detect.",
        "Number of video frames the audio covers: ceil(duration x fps).",
        "The frame rate, for Create Video.",
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "audio_encoder": (MEMO_AUDIO_ENCODER, {"tooltip": "From MEMO Audio Encoder Loader."}),
            "audio": ("AUDIO", {"tooltip": "The speech (or song) that drives the face, e.g. from Load Audio. Use "
                                "MEMO Vocal Separation first when there is music under the voice."}),
            "fps": float_input(30.0, 1.0, 120.0, 0.01, "Video frame rate. MEMO was trained at 30 fps."),
            "frames_per_clip": int_input(16, 1, MAX_FRAMES_PER_CLIP, "Frames generated per clip (16 in MEMO). The "
                                         "features are padded to whole clips here, so the sampler takes it from here."),
            "start_seconds": float_input(0.0, 0.0, 1.0e6, 0.1, "Skip this much audio at the start."),
            "duration_seconds": float_input(0.0, 0.0, 1.0e6, 0.1, "Use this much audio from the start point; 0 = to "
                                            "the end."),
        }}

    def encode(self, audio_encoder, audio, fps=30.0, frames_per_clip=16, start_seconds=0.0, duration_seconds=0.0):
        from ..memo_pipeline.audio.features import extract_audio_features
        from ..memo_pipeline.audio.io import load_audio

        encoder = expect(audio_encoder, MemoAudioEncoder, "audio_encoder", MEMO_AUDIO_ENCODER)
        if not (isinstance(fps, (int, float)) and math.isfinite(fps) and fps > 0):
            raise ValueError(f"input 'fps' must be a positive number, got {fps!r}")
        if not 1 <= int(frames_per_clip) <= MAX_FRAMES_PER_CLIP:
            raise ValueError(f"input 'frames_per_clip' must be in 1..{MAX_FRAMES_PER_CLIP}, got {frames_per_clip}")
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
    DESCRIPTION = ("Detects the emotion of the speech over time, as MEMO does: emotion2vec + MEMO's classifier on "
                   "3-second windows, one label per second (2-second windows at the ends). Feed it the speech cut like "
                   "the MEMO audio: the 'audio' output of MEMO Audio Encode.")
    CATEGORY = CATEGORY_AUDIO
    FUNCTION = "detect"
    RETURN_TYPES = (MEMO_EMOTION, "STRING")
    RETURN_NAMES = ("emotion", "summary")
    OUTPUT_TOOLTIPS = ("Emotion labels over the track, for the sampler's emotion input.",
                       "The detected emotions as text, e.g. for a Preview Any node.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "emotion_model": (MEMO_EMOTION_MODEL, {"tooltip": "From MEMO Emotion Model Loader."}),
            "audio": ("AUDIO", {"tooltip": "The speech track (the same cut as the MEMO audio)."}),
        }}

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
    DESCRIPTION = ("Sets the emotion by hand instead of detecting it: one label ('happy') or change points "
                   "('0:neutral, 3.5:happy, 8:sad' in seconds, '48f:happy' in frames). Labels: angry, disgusted, "
                   "fearful, happy, neutral, other, sad, surprised, unknown. The released model treats it as a hint.")
    CATEGORY = CATEGORY_AUDIO
    FUNCTION = "schedule"
    RETURN_TYPES = (MEMO_EMOTION, "STRING")
    RETURN_NAMES = ("emotion", "summary")
    OUTPUT_TOOLTIPS = ("Emotion labels over the track, for the sampler's emotion input.",
                       "Which frames get which emotion, as text.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "memo_audio": (MEMO_AUDIO, {"tooltip": "The MEMO audio the schedule is for (its length and frame rate "
                                        "turn times into frames)."}),
            "schedule": ("STRING", {"default": "0:neutral", "multiline": True,
                                    "tooltip": "A label, or 'time:label' pairs separated by commas or new lines; "
                                    "times in seconds, or frames with an f suffix. Must start at 0."}),
        }}

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
    DESCRIPTION = ("Extracts the voice from a mix with the MDX-Net model MEMO uses (Kim_Vocal_2.onnx, run with "
                   "onnxruntime), so music or noise under the voice does not drive the mouth. Output: the vocal "
                   "stem at the input's sample rate and channel count.")
    CATEGORY = CATEGORY_AUDIO
    FUNCTION = "separate"
    RETURN_TYPES = ("AUDIO",)
    RETURN_NAMES = ("vocals",)
    OUTPUT_TOOLTIPS = ("The vocal stem, for MEMO Audio Encode.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "audio": ("AUDIO", {"tooltip": "The mix to separate."}),
            "model": combo(choices_or_hint(vocal_model_choices, "model", (host_mod.VOCAL_FOLDER, host_mod.MEMO_FOLDER)),
                           f"Kim_Vocal_2.onnx under models/vocal_separator/ or a MEMO checkpoint's {VOCAL_SUBPATH}."),
            "peak_normalize": ("BOOLEAN", {"default": True, "tooltip": "Scale the stem to a 0.6-0.9 peak as MEMO's "
                                           "audio-separator does; off keeps the input's level."}),
            "order": (["official", "full-band"], {"default": "official", "tooltip": "official: as MEMO, the track is "
                      "first converted to 16 kHz 16-bit and that is separated (the stem comes out at 16 kHz); "
                      "full-band: the track is separated at its own rate (cleaner, but not what MEMO did)."}),
        }}

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


NODE_CLASSES = {
    "MemoAudioEncode": (MemoAudioEncode, "MEMO Audio Encode"),
    "MemoEmotionDetect": (MemoEmotionDetect, "MEMO Emotion Detect"),
    "MemoEmotionSchedule": (MemoEmotionSchedule, "MEMO Emotion Schedule"),
    "MemoVocalSeparation": (MemoVocalSeparation, "MEMO Vocal Separation"),
}
