from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from memo_pipeline.audio.emotions import (
    EMOTION_LABELS,
    NUM_EMOTION_CLASSES,
    UNCONDITIONAL_EMOTION,
    clip_emotion,
    clip_labels,
    emotion_index,
    frame_labels_from_sample_labels,
    parse_emotion_schedule,
    schedule_frame_labels,
)

GOLDEN = Path(__file__).parent / "fixtures" / "golden"


def test_label_order_matches_emotion2vec_and_memo_issue_23():
    assert EMOTION_LABELS == (
        "angry", "disgusted", "fearful", "happy", "neutral", "other", "sad", "surprised", "unknown",
    )
    assert NUM_EMOTION_CLASSES == 9 and UNCONDITIONAL_EMOTION == 9


def test_emotion_index_accepts_names_indices_and_aliases():
    assert emotion_index("Happy ") == 3
    assert emotion_index("<unk>") == 8
    assert emotion_index("6") == 6
    assert emotion_index(0) == 0
    with pytest.raises(ValueError, match="valid labels: 0=angry"):
        emotion_index("joyful")
    with pytest.raises(ValueError, match="out of range"):
        emotion_index(9)


def test_single_label_fills_track():
    assert schedule_frame_labels("sad", 7, fps=30).tolist() == [6] * 7


def test_schedule_in_seconds_and_frames():
    labels = schedule_frame_labels("0:neutral, 3.5:happy; 8:sad", 300, fps=30)
    assert labels.dtype == torch.long and labels.shape == (300,)
    assert labels[:105].eq(4).all() and labels[105:240].eq(3).all() and labels[240:].eq(6).all()
    mixed = schedule_frame_labels("0f:angry\n2s:surprised\n70f:fearful", 100, fps=25)
    assert mixed[:50].eq(0).all() and mixed[50:70].eq(7).all() and mixed[70:].eq(2).all()


def test_change_takes_effect_at_first_frame_at_or_after_time():
    labels = schedule_frame_labels("0:neutral, 0.01:happy", 4, fps=30)
    assert labels.tolist() == [4, 3, 3, 3]


@pytest.mark.parametrize(
    "text, message",
    [
        ("0:neutral, 3:joy", "unknown emotion label 'joy'.*0=angry.*8=unknown"),
        ("0:neutral, 5:happy, 3:sad", "strictly increase"),
        ("0:neutral, 2:happy, 2:sad", "strictly increase"),
        ("0:neutral, -1:happy", "negative time"),
        ("1:neutral", "must start at time 0"),
        ("0:neutral, happy", "no 'time:' prefix"),
        ("0:neutral, 1.5f:happy", "must be an integer"),
        ("zero:neutral", "bad time"),
        ("  ", "empty"),
    ],
)
def test_bad_schedules_raise_clear_errors(text, message):
    with pytest.raises(ValueError, match=message):
        schedule_frame_labels(text, 100, fps=30)


def test_entries_past_the_end_warn_and_are_ignored():
    with pytest.warns(UserWarning, match="after the last frame"):
        labels = schedule_frame_labels("0:happy, 100:sad", 10, fps=30)
    assert labels.tolist() == [3] * 10


def test_parse_returns_entries():
    entries = parse_emotion_schedule("0:neutral, 48f:happy")
    assert [(e.time, e.in_frames, e.label) for e in entries] == [(0.0, False, 4), (48.0, True, 3)]


def test_frame_labels_from_sample_labels_matches_interpolate_nearest():
    generator = torch.Generator().manual_seed(0)
    samples = torch.randint(0, 9, (48_000,), generator=generator, dtype=torch.int32)
    for frames in (1, 7, 90, 96, 1000):
        expected = F.interpolate(samples[None, None].float(), size=frames, mode="nearest")[0, 0].int()
        got = frame_labels_from_sample_labels(samples, frames)
        assert got.dtype == torch.long
        assert torch.equal(got, expected.long())


def test_frame_labels_from_sample_labels_rejects_unfilled_samples():
    with pytest.raises(ValueError, match="values in \\[-1"):
        frame_labels_from_sample_labels(torch.tensor([-1, 3, 3]), 2)
    with pytest.raises(ValueError, match="integer labels"):
        frame_labels_from_sample_labels(torch.tensor([1.0, 3.0]), 2)


def test_clip_labels_mode_with_smallest_tie_like_golden_pipeline():
    # The golden pipeline's labels are [3,3,5,1 | 2,7,7,2]: clip 1 is a tie whose mode is 2.
    labels = load_file(GOLDEN / "full_pipeline.safetensors")["in.audio_emotion"]
    assert labels.tolist() == [3, 3, 5, 1, 2, 7, 7, 2]
    assert clip_labels(labels, 4).tolist() == [3, 2]
    expected = [int(torch.mode(chunk).values) for chunk in labels.long().view(-1, 4)]
    assert clip_labels(labels, 4).tolist() == expected


def test_clip_labels_random_agrees_with_explicit_count():
    generator = torch.Generator().manual_seed(1)
    labels = torch.randint(0, 9, (16 * 50,), generator=generator)
    got = clip_labels(labels, 16)
    for clip, value in zip(labels.view(-1, 16), got):
        counts = torch.bincount(clip, minlength=9)
        assert int(value) == int((counts == counts.max()).nonzero()[0])


def test_clip_labels_rejects_partial_clip():
    with pytest.raises(ValueError, match="not a multiple"):
        clip_labels(torch.zeros(10, dtype=torch.long), 4)


def test_clip_emotion_is_the_same_vote_for_one_clip():
    generator = torch.Generator().manual_seed(2)
    labels = torch.randint(0, 9, (16 * 20,), generator=generator)
    per_clip = clip_labels(labels, 16).tolist()
    assert [clip_emotion(chunk) for chunk in labels.view(-1, 16)] == per_clip
    assert clip_emotion(torch.tensor([2, 7, 7, 2], dtype=torch.int32)) == 2  # tie -> smallest, any int dtype
    assert clip_emotion(torch.tensor([8])) == 8


def test_networks_have_one_row_per_label_plus_the_unconditional_row():
    from memo_pipeline.models.audio_attention import EmotionAdaLayerNorm
    from memo_pipeline.models.emotion_classifier import AudioEmotionClassifier

    classifier = AudioEmotionClassifier(num_classifier_layers=2, num_classifier_channels=8)
    assert classifier(torch.zeros(1, 1024)).shape == (1, NUM_EMOTION_CLASSES)
    table = EmotionAdaLayerNorm(8).class_embedder.embedding_table
    assert table.num_embeddings == NUM_EMOTION_CLASSES + 1 and UNCONDITIONAL_EMOTION == table.num_embeddings - 1
