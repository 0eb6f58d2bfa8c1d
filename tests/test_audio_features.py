import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import Wav2Vec2FeatureExtractor, Wav2Vec2Model

from memo_pipeline.audio.features import (
    AudioFeatures,
    Wav2Vec2AudioEncoder,
    extract_audio_features,
    frame_count,
    normalize_waveform,
)
from memo_pipeline.audio.io import AudioClip, load_audio
from memo_pipeline.parity.audio_case import audio_preprocess_case
from memo_pipeline.tiny import SHORT_CONV, randomize, tiny_wav2vec2_config

GOLDEN = Path(__file__).parent / "fixtures" / "golden"


def tiny_encoder(seed=0, stable=False):
    """A tiny wav2vec2 with the published kernel layout, initialised so activations stay O(1)."""
    config = tiny_wav2vec2_config(stable, hidden_size=32, intermediate_size=64, num_conv_pos_embedding_groups=4,
                                  **SHORT_CONV)
    return Wav2Vec2AudioEncoder(randomize(Wav2Vec2Model(config).eval(), seed))


def speech_like(seconds, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(int(16000 * seconds)) / 16000
    voiced = np.sin(2 * np.pi * 180 * t * (1 + 0.2 * np.sin(2 * np.pi * 0.7 * t)))
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 3.1 * t)
    return (0.3 * voiced * envelope + 0.02 * rng.standard_normal(len(t))).astype(np.float32)


# --- golden parity ------------------------------------------------------------------------


def test_audio_preprocess_golden_case():
    case = json.loads((GOLDEN / "audio_preprocess.json").read_text())
    tensors = load_file(GOLDEN / "audio_preprocess.safetensors")
    outputs = audio_preprocess_case(case, tensors)
    expected = {key for key in tensors if key.startswith("out.")}
    assert set(outputs) == expected
    for key in expected:
        assert outputs[key].shape == tensors[key].shape, key
        torch.testing.assert_close(outputs[key], tensors[key], atol=2e-5, rtol=1e-5, msg=key)


def test_normalisation_and_padding_match_golden_input_values():
    case = json.loads((GOLDEN / "audio_preprocess.json").read_text())
    tensors = load_file(GOLDEN / "audio_preprocess.safetensors")
    waveform = tensors["in.waveform"].numpy()
    fps, clip = case["call"]["fps"], case["call"]["num_generated_frames_per_clip"]
    frames = frame_count(len(waveform), fps)
    assert frames == case["raw_audio_length"]
    pad = (clip - frames % clip) * (16000 // fps)
    assert pad == case["pad_samples"]
    padded = np.concatenate([normalize_waveform(waveform), np.zeros(pad, np.float32)])
    np.testing.assert_allclose(padded, tensors["in.input_values_padded"][0].numpy(), atol=1e-6)


def test_normalisation_matches_transformers_feature_extractor():
    samples = speech_like(1.3) * 3 + 0.2
    reference = Wav2Vec2FeatureExtractor(do_normalize=True)(samples, sampling_rate=16000).input_values[0]
    np.testing.assert_allclose(normalize_waveform(samples), reference, atol=1e-6)


def test_frame_count_uses_float_arithmetic_like_the_official_code():
    assert frame_count(4800, 30) == 9
    assert frame_count(16000, 30) == 30
    # 70400 samples are exactly 110 frames at 25 fps, but 70400 / 16000 * 25 rounds up to 110.00000000000001.
    assert frame_count(70400, 25) == 111


# --- composition of the stock transformers modules -------------------------------------------


@pytest.mark.parametrize("stable", [False, True])
def test_encoder_matches_stock_wav2vec2_when_no_resampling_is_needed(stable):
    encoder = tiny_encoder(stable=stable)
    waveform = torch.from_numpy(speech_like(0.5))
    with torch.no_grad():
        stock = encoder.model(waveform[None], output_hidden_states=True)
    conv = encoder.conv_features(waveform.numpy())
    ours = encoder.encode(conv)  # same length, so the official linear resampling is the identity
    assert ours.shape == (conv.shape[0], 2, 32)
    recorded = stock.hidden_states[1:]
    torch.testing.assert_close(ours[:, 0], recorded[0][0], atol=1e-5, rtol=1e-5)
    # transformers 4.46 (used by MEMO) records the post-norm output as the last hidden state.
    torch.testing.assert_close(ours[:, -1], stock.last_hidden_state[0], atol=1e-5, rtol=1e-5)


def test_windows_clamp_at_the_edges_like_the_official_loop():
    layers = torch.randn(7, 3, 4)
    features = AudioFeatures(layers, num_frames=6, padded_frames=7, fps=30.0, duration_s=0.2)
    expected = torch.stack(
        [torch.stack([layers[min(max(i + j, 0), 6)] for j in range(-2, 3)]) for i in range(7)]
    )
    assert torch.equal(features.audio_emb, expected)
    assert torch.equal(features.windows(2, 5), expected[2:5])
    with pytest.raises(IndexError):
        features.windows(3, 9)


# --- shapes, padding and bad input ----------------------------------------------------------------


def test_short_clip_is_padded_to_one_clip():
    encoder = tiny_encoder()
    features = extract_audio_features(encoder, speech_like(0.1), fps=30, frames_per_clip=16)
    assert (features.num_frames, features.padded_frames) == (3, 16)
    assert features.layer_features.shape == (16, 2, 32)
    assert features.audio_emb.shape == (16, 5, 2, 32)
    assert features.duration_s == pytest.approx(0.1)
    assert torch.isfinite(features.layer_features).all()


def test_without_clip_padding_frames_follow_the_duration():
    features = extract_audio_features(tiny_encoder(), speech_like(1.0), fps=25, frames_per_clip=None)
    assert features.num_frames == features.padded_frames == 25


def test_too_short_for_the_receptive_field_is_a_clear_error():
    with pytest.raises(ValueError, match="too short.*receptive field of 40 samples"):
        extract_audio_features(tiny_encoder(), np.zeros(10, np.float32), fps=30, frames_per_clip=None)


@pytest.mark.parametrize(
    "audio, kwargs, message",
    [
        (np.zeros(0, np.float32), {}, "empty"),
        (np.zeros((2, 100), np.float32), {}, "mono 1-D"),
        (np.array([0.0, np.nan] * 1000, np.float32), {}, "NaN/inf"),
        (np.zeros(1000, np.float32), {"fps": 0}, "fps must be"),
        (np.zeros(1000, np.float32), {"frames_per_clip": 0}, "frames_per_clip"),
        (AudioClip(np.zeros(1000, np.float32), 44100, "song.wav", 44100, 1), {}, "'song.wav' is at 44100 Hz"),
    ],
)
def test_bad_inputs_raise_before_the_model(audio, kwargs, message):
    with pytest.raises(ValueError, match=message):
        extract_audio_features(tiny_encoder(), audio, **kwargs)


def test_silence_warns_and_gives_finite_features(caplog):
    with caplog.at_level(logging.WARNING):
        features = extract_audio_features(tiny_encoder(), np.zeros(16000, np.float32))
    assert "is silent" in caplog.text
    assert torch.isfinite(features.layer_features).all()
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        extract_audio_features(tiny_encoder(), speech_like(1.0) * 1e-5)
    assert "nearly silent" in caplog.text


def test_file_to_features_end_to_end(tmp_path):
    import wave

    path = tmp_path / "voice_48k_stereo.wav"
    voice = speech_like(2.0)
    stereo48 = np.repeat(np.stack([voice, voice], axis=1), 3, axis=0)  # crude 48 kHz, 2 channels
    with wave.open(str(path), "wb") as writer:
        writer.setnchannels(2)
        writer.setsampwidth(2)
        writer.setframerate(48000)
        writer.writeframes(np.round(stereo48 * 32767).astype("<i2").tobytes())
    features = extract_audio_features(tiny_encoder(), load_audio(path), fps=30, frames_per_clip=16)
    assert (features.num_frames, features.padded_frames) == (60, 64)
    assert features.duration_s == pytest.approx(2.0)


# --- long audio ------------------------------------------------------------------------------


@pytest.mark.parametrize("stable", [False, True])
def test_windowed_conv_front_end_is_exact(stable):
    """Windows on the conv output grid plus whole-track GroupNorm statistics reproduce one pass."""
    encoder = tiny_encoder(stable=stable)
    waveform = normalize_waveform(speech_like(3.0, seed=1))
    one_pass = encoder.conv_features(waveform)
    for max_samples in (4000, 7777, 16000):
        windowed = encoder.conv_features(waveform, max_samples=max_samples)
        assert windowed.shape == one_pass.shape
        torch.testing.assert_close(windowed, one_pass, atol=2e-5, rtol=1e-4)


def test_windowed_encoder_is_exact_when_attention_is_local():
    """With attention outputs zeroed only the positional conv mixes frames (±8), so 8 frames of context suffice."""
    encoder = tiny_encoder()
    with torch.no_grad():
        for layer in encoder.model.encoder.layers:
            layer.attention.out_proj.weight.zero_()
    frames = torch.randn(500, 16)
    one_pass = encoder.encode(frames)
    windowed = encoder.encode(frames, max_frames=60, context_frames=8)
    torch.testing.assert_close(windowed, one_pass, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(encoder.encode(frames, max_frames=500, context_frames=8), one_pass)
    with pytest.raises(ValueError, match="no room"):
        encoder.encode(frames, max_frames=16, context_frames=8)


def test_windowed_features_stay_close_to_one_pass():
    """Real attention spans the whole track, so windows are an approximation; bound its size.

    A random tiny model attends almost uniformly over everything, which is a worst case for
    windowing (a trained wav2vec2 attends mostly locally). Measured here: 3.8 % relative RMS
    with 20 s windows and 5 s context.
    """
    encoder = tiny_encoder()
    audio = speech_like(40.0)
    one_pass = extract_audio_features(encoder, audio, max_pass_seconds=None).layer_features
    windowed = extract_audio_features(encoder, audio, max_pass_seconds=20, context_seconds=5).layer_features
    assert windowed.shape == one_pass.shape
    relative_rms = ((windowed - one_pass).pow(2).mean() / one_pass.pow(2).mean()).sqrt().item()
    assert relative_rms < 0.08
    short = extract_audio_features(encoder, speech_like(5.0), max_pass_seconds=20).layer_features
    exact = extract_audio_features(encoder, speech_like(5.0), max_pass_seconds=None).layer_features
    assert torch.equal(short, exact)  # below the threshold the official single pass runs


def test_progress_reaches_one_and_a_raise_cancels():
    encoder = tiny_encoder()
    audio = speech_like(12.0)
    seen = []
    extract_audio_features(encoder, audio, max_pass_seconds=4, context_seconds=1, on_progress=seen.append)
    assert seen[-1] == 1.0 and seen == sorted(seen) and len(seen) > 4  # several windows in each half
    assert any(0 < f <= 0.5 for f in seen) and any(0.5 < f < 1 for f in seen)

    class Stop(Exception):
        pass

    def stop_in_transformer(fraction):
        if fraction > 0.5:
            raise Stop

    with pytest.raises(Stop):
        extract_audio_features(encoder, audio, max_pass_seconds=4, context_seconds=1, on_progress=stop_in_transformer)
