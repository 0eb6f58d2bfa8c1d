"""Emotion windowing: MEMO's per-second windows, overwrite order, short clips, frame resize."""

import numpy as np
import pytest
import torch
from torch import nn

from memo_pipeline.audio.emotion2vec import Emotion2Vec, Emotion2VecConfig
from memo_pipeline.audio.emotion_detect import detect_emotions, emotion_windows, sample_emotion_labels
from memo_pipeline.models.emotion_classifier import AudioEmotionClassifier

S = 16000


class WindowProbe:
    """Fake backbone whose 'feature' is the window's position and length.

    The signal fed to it is ``arange(N)``, so a window's first sample is its start index.
    """

    min_input_samples = 400

    def __init__(self):
        self.calls = []

    def utterance_embedding(self, window):
        start, length = int(window[0]), window.numel()
        self.calls.append((start, length))
        return torch.tensor([[float(start), float(length)]], dtype=torch.float64)


def label_of(start, length):
    return (start // S * 5 + length // 4000) % 9


class ProbeClassifier(nn.Module):
    """Turns (start, length) into near-one-hot probabilities for ``label_of``."""

    def forward(self, features):
        start, length = int(features[0, 0]), int(features[0, 1])
        logits = torch.zeros(1, 9)
        logits[0, label_of(start, length)] = 5.0
        return torch.softmax(logits, dim=-1)

    predict = AudioEmotionClassifier.predict  # the real labelling rule on top of the probe's probabilities


def official_rule(n):
    """Literal transcription of MEMO's loop, Python slicing semantics included."""
    idx = np.arange(n)
    labels = np.full(n, -1)
    w = idx[: 2 * S]
    labels[:S] = label_of(int(w[0]), len(w))
    for i in range(S, n - S, S):
        w = idx[i - S : i - S + 3 * S]
        labels[i : i + S] = label_of(int(w[0]), len(w))
    w = idx[-2 * S :]
    labels[-S:] = label_of(int(w[0]), len(w))
    return labels


LENGTHS = [400, 8000, S - 1, S, S + 1, 20000, 2 * S - 1, 2 * S, 2 * S + 1, 40000]
LENGTHS += [3 * S, 3 * S + 1, 50000, 4 * S, 5 * S + 123, 7 * S + 15999]


@pytest.mark.parametrize("n", LENGTHS)
def test_sample_labels_follow_the_official_loop(n):
    signal = torch.arange(n, dtype=torch.float64)
    labels = sample_emotion_labels(signal, WindowProbe(), ProbeClassifier())
    assert labels.dtype == torch.int32
    expected = official_rule(n)
    assert (expected >= 0).all()
    assert np.array_equal(labels.numpy(), expected)


def test_window_plan_examples():
    # < 1 s and < 2 s: the whole clip decides everything (start and end windows coincide)
    assert emotion_windows(8000) == [(0, 8000, 0, 8000), (0, 8000, 0, 8000)]
    assert emotion_windows(20000) == [(0, 20000, 0, 16000), (0, 20000, 4000, 20000)]
    # 2.5 s: one middle window, clipped at the end, then the last 2 s overwrite [24000, 40000)
    assert emotion_windows(40000) == [(0, 32000, 0, 16000), (0, 40000, 16000, 32000), (8000, 40000, 24000, 40000)]
    # 3 s exactly: range(16000, 32000, 16000) gives one middle window
    assert emotion_windows(48000) == [(0, 32000, 0, 16000), (0, 48000, 16000, 32000), (16000, 48000, 32000, 48000)]
    with pytest.raises(ValueError):
        emotion_windows(0)


def test_identical_windows_are_classified_once():
    probe = WindowProbe()
    sample_emotion_labels(torch.arange(2 * S, dtype=torch.float64), probe, ProbeClassifier())
    assert probe.calls == [(0, 2 * S)]
    probe = WindowProbe()
    sample_emotion_labels(torch.arange(5 * S, dtype=torch.float64), probe, ProbeClassifier())
    assert probe.calls == [(0, 2 * S), (0, 3 * S), (S, 3 * S), (2 * S, 3 * S), (3 * S, 2 * S)]


def test_progress_callback_sees_every_window_and_can_cancel():
    seen = []
    sample_emotion_labels(torch.arange(5 * S, dtype=torch.float64), WindowProbe(), ProbeClassifier(),
                          on_window=lambda done, total: seen.append((done, total)))
    total = len(emotion_windows(5 * S))
    assert seen == [(i, total) for i in range(1, total + 1)]

    class Stop(Exception):
        pass

    def stop_after_two(done, total):
        if done == 2:
            raise Stop

    probe = WindowProbe()
    with pytest.raises(Stop):
        sample_emotion_labels(torch.arange(5 * S, dtype=torch.float64), probe, ProbeClassifier(), on_window=stop_after_two)
    assert len(probe.calls) == 2


@pytest.mark.parametrize("n,num_frames", [(5 * S + 123, 96), (20000, 32), (2 * S, 7), (50000, 1), (3 * S, 90)])
def test_frame_labels_are_nearest_samples(n, num_frames):
    signal = torch.arange(n, dtype=torch.float64)
    frames = detect_emotions(signal, num_frames, WindowProbe(), ProbeClassifier())
    assert frames.dtype == torch.long and frames.shape == (num_frames,)
    per_sample = official_rule(n)
    # F.interpolate(mode="nearest") on CPU: sample floor(f * scale), scale = n / num_frames in float32
    scale = np.float32(n) / np.float32(num_frames)
    picked = [per_sample[min(int(np.floor(np.float32(f) * scale)), n - 1)] for f in range(num_frames)]
    assert frames.tolist() == picked


def test_first_channel_of_multichannel_input_is_used():
    n = 3 * S + 500
    mono = torch.arange(n, dtype=torch.float64)
    stereo = torch.stack([mono, torch.zeros(n, dtype=torch.float64)])
    a = sample_emotion_labels(stereo, WindowProbe(), ProbeClassifier())
    b = sample_emotion_labels(mono.numpy(), WindowProbe(), ProbeClassifier())
    assert torch.equal(a, b)


def test_bad_inputs_give_clear_errors():
    probe, clf = WindowProbe(), ProbeClassifier()
    with pytest.raises(ValueError, match="too short"):
        sample_emotion_labels(torch.zeros(399), probe, clf)
    with pytest.raises(ValueError, match="empty"):
        sample_emotion_labels(torch.zeros(0), probe, clf)
    with pytest.raises(ValueError, match="floating"):
        sample_emotion_labels(torch.zeros(S, dtype=torch.int16), probe, clf)
    with pytest.raises(ValueError, match="shape"):
        sample_emotion_labels(torch.zeros(1, 2, S), probe, clf)
    with pytest.raises(ValueError, match="tensor or numpy"):
        sample_emotion_labels([0.0] * S, probe, clf)
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="num_frames"):
            detect_emotions(torch.zeros(S), bad, probe, clf)


def test_real_backbone_and_classifier_end_to_end():
    """Real Emotion2Vec (1024-d, few cheap layers) and MEMO's classifier class. The classifier is
    a single Linear whose row k points at window k's centred feature, so window k must get label k
    and the label track shows exactly which window decided which samples."""
    cfg = Emotion2VecConfig(
        embed_dim=1024, depth=1, prenet_depth=1, num_heads=16, num_alibi_heads=16, mlp_ratio=0.25,
        feature_encoder_spec=((8, 10, 5),) + ((8, 3, 2),) * 4 + ((8, 2, 2),) * 2,
        conv_pos_width=3, conv_pos_depth=1, conv_pos_groups=16, num_extra_tokens=2,
    )  # fmt: skip
    torch.manual_seed(0)
    backbone = Emotion2Vec(cfg).eval()
    t = torch.arange(4 * S + 2000) / S
    audio = torch.sin(2 * np.pi * (110 + 60 * t) * t) * (0.2 + t % 1.0)
    plan = emotion_windows(audio.numel())
    assert len(plan) == 5
    with torch.no_grad():
        feats = torch.cat([backbone.utterance_embedding(audio[w0:w1]) for w0, w1, _, _ in plan])
        centred = feats - feats.mean(0)
        rows = centred / centred.norm(dim=1, keepdim=True)
        classifier = AudioEmotionClassifier(num_classifier_layers=1).eval()
        classifier.layers.weight.zero_()
        classifier.layers.bias.fill_(-1e4)  # classes 5..8 are never chosen
        classifier.layers.weight[: len(plan)] = rows
        classifier.layers.bias[: len(plan)] = -(rows @ feats.mean(0))

    labels = sample_emotion_labels(audio, backbone, classifier)
    expected = torch.empty_like(labels)
    for k, (_, _, l0, l1) in enumerate(plan):
        expected[l0:l1] = k
    assert torch.equal(labels, expected)

    frames = detect_emotions(audio, 40, backbone, classifier)
    assert torch.equal(frames, expected[(torch.arange(40) * (audio.numel() / 40)).long()].long())
