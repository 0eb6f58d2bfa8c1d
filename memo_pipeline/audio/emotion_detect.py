"""Per-frame emotion labels from audio, following MEMO's ``extract_audio_emotion_labels``.

The 16 kHz signal is cut into windows. Each window's emotion2vec utterance feature is labelled by
MEMO's classifier head (`AudioEmotionClassifier.predict`, which follows the official extraction). With ``S = 16000`` samples (one second) and ``N`` samples in all:

* the first ``2 S`` samples decide samples ``[0, S)``;
* for ``i = S, 2S, ...`` while ``i < N - S``, the window ``[i - S, i + 2S)`` decides ``[i, i + S)``;
* the last ``2 S`` samples decide the last ``S`` samples, overwriting what was there.

Windows are clipped to the signal, so clips shorter than 2 s use the whole clip. The per-sample
labels are then nearest-resized to the video frame count.
"""

from __future__ import annotations

import numpy as np
import torch

from .emotion2vec import SAMPLE_RATE
from .emotions import frame_labels_from_sample_labels


def emotion_windows(num_samples: int) -> list[tuple[int, int, int, int]]:
    """``(window_start, window_end, label_start, label_end)`` in sample indices, in the order the
    labels are written (later entries overwrite earlier ones)."""
    if num_samples < 1:
        raise ValueError(f"num_samples must be positive, got {num_samples}")
    s, n = SAMPLE_RATE, num_samples
    plan = [(0, min(2 * s, n), 0, min(s, n))]
    plan += [(i - s, min(i + 2 * s, n), i, min(i + s, n)) for i in range(s, n - s, s)]
    plan.append((max(n - 2 * s, 0), n, max(n - s, 0), n))
    return plan


def _as_mono_samples(samples) -> torch.Tensor:
    """1-D float samples; for ``(channels, samples)`` input the first channel, as MEMO takes it."""
    if isinstance(samples, np.ndarray):
        samples = torch.from_numpy(samples)
    if not isinstance(samples, torch.Tensor):
        raise ValueError(f"samples must be a tensor or numpy array, got {type(samples).__name__}")
    if samples.ndim == 2:
        samples = samples[0]
    if samples.ndim != 1:
        raise ValueError(f"samples must be (samples,) or (channels, samples), got shape {tuple(samples.shape)}")
    if not samples.dtype.is_floating_point:
        raise ValueError(f"samples must be floating point (16 kHz, roughly in [-1, 1]), got {samples.dtype}")
    if samples.numel() == 0:
        raise ValueError("samples is empty")
    return samples


@torch.inference_mode()
def classify_window(window: torch.Tensor, backbone, classifier) -> int:
    """Emotion class of one window: the backbone's utterance feature, labelled by the classifier's `predict`."""
    features = backbone.utterance_embedding(window)
    param = next(classifier.parameters(), None)
    if param is not None:
        features = features.to(device=param.device, dtype=param.dtype)
    return int(classifier.predict(features)[0])


@torch.inference_mode()
def sample_emotion_labels(samples_16k, backbone, classifier, on_window=None) -> torch.Tensor:
    """Per-sample labels ``IntTensor[N]`` (int32, as the official code keeps them).

    ``on_window(done, total)`` is called after every window (progress); it may raise to cancel.
    """
    samples = _as_mono_samples(samples_16k)
    if samples.numel() < backbone.min_input_samples:
        raise ValueError(
            f"audio too short for emotion detection: {samples.numel()} samples at 16 kHz, "
            f"need at least {backbone.min_input_samples}"
        )
    labels = torch.empty(samples.numel(), dtype=torch.int32)
    decided: dict[tuple[int, int], int] = {}  # identical windows give identical labels
    plan = emotion_windows(samples.numel())
    for done, (w0, w1, l0, l1) in enumerate(plan, start=1):
        if (w0, w1) not in decided:
            decided[(w0, w1)] = classify_window(samples[w0:w1], backbone, classifier)
        labels[l0:l1] = decided[(w0, w1)]
        if on_window is not None:
            on_window(done, len(plan))
    return labels


def detect_emotions(samples_16k, num_frames: int, backbone, classifier) -> torch.Tensor:
    """Per-frame emotion labels ``LongTensor[num_frames]`` for 16 kHz audio, as MEMO computes them.

    ``backbone``: an ``Emotion2Vec`` (or anything with ``utterance_embedding`` and
    ``min_input_samples``); ``classifier``: MEMO's ``AudioEmotionClassifier`` (its ``predict`` gives the labels).
    """
    if isinstance(num_frames, bool) or not isinstance(num_frames, (int, np.integer)) or num_frames < 1:
        raise ValueError(f"num_frames must be a positive integer, got {num_frames!r}")
    return frame_labels_from_sample_labels(sample_emotion_labels(samples_16k, backbone, classifier), int(num_frames))
