import sys
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from memo_pipeline.audio.io import AudioLoadError, load_audio, resample


def tone(rate, seconds, freq=440.0, amplitude=0.5):
    t = np.arange(int(rate * seconds)) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def write_audio(path, codec, sample_format, rate, channels):
    """Encode ``channels`` ([C, T] float32 in [-1, 1]) with PyAV into ``path``."""
    layout = {1: "mono", 2: "stereo"}[channels.shape[0]]
    if sample_format == "s16":
        data = np.round(channels.T.reshape(1, -1) * 32767).astype(np.int16)
    elif sample_format == "u8":
        data = np.round(channels.T.reshape(1, -1) * 127 + 128).astype(np.uint8)
    elif sample_format == "fltp":
        data = np.ascontiguousarray(channels, dtype=np.float32)
    else:
        raise AssertionError(sample_format)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=rate, layout=layout)
        stream.format = sample_format
        frame = av.AudioFrame.from_ndarray(data, format=sample_format, layout=layout)
        frame.sample_rate = rate
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path


def peak_frequency(samples, rate):
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return np.fft.rfftfreq(len(samples), 1 / rate)[np.argmax(spectrum)]


@pytest.mark.parametrize(
    "name, codec, sample_format, rate, stereo",
    [
        ("s16_48k_stereo.wav", "pcm_s16le", "s16", 48000, True),
        ("u8_8k_mono.wav", "pcm_u8", "u8", 8000, False),
        ("s16_44k.flac", "flac", "s16", 44100, False),
        ("stereo_44k.mp3", "libmp3lame", "fltp", 44100, True),
        ("stereo_48k.m4a", "aac", "fltp", 48000, True),
    ],
)
def test_files_decode_to_mono_16k(tmp_path, name, codec, sample_format, rate, stereo):
    signal = tone(rate, 1.0)
    channels = np.stack([signal, signal * 0.5]) if stereo else signal[None]
    path = write_audio(tmp_path / name, codec, sample_format, rate, channels)
    clip = load_audio(path)
    assert clip.sample_rate == 16000 and clip.samples.dtype == np.float32 and clip.samples.ndim == 1
    assert clip.original_sample_rate == rate and clip.original_channels == (2 if stereo else 1)
    assert clip.source == str(path)
    # Lossy codecs add priming/padding samples; the duration stays within one codec frame.
    assert abs(clip.duration_s - 1.0) < 0.1
    assert abs(peak_frequency(clip.samples, 16000) - 440) < 3
    expected_amplitude = 0.375 if stereo else 0.5
    middle = clip.samples[4000:12000]
    assert np.sqrt(2 * np.mean(middle**2)) == pytest.approx(expected_amplitude, rel=0.05)


def test_wav_16bit_decodes_exactly(tmp_path):
    signal = tone(16000, 0.5)
    path = write_audio(tmp_path / "exact.wav", "pcm_s16le", "s16", 16000, signal[None])
    clip = load_audio(path)
    assert np.array_equal(clip.samples, np.round(signal * 32767).astype(np.int16) / np.float32(32768))


def test_8bit_scaling(tmp_path):
    signal = tone(8000, 0.5, amplitude=0.9)
    clip = load_audio(write_audio(tmp_path / "u8.wav", "pcm_u8", "u8", 8000, signal[None]))
    assert np.abs(clip.samples[1000:7000]).max() == pytest.approx(0.9, abs=0.02)


def test_comfy_audio_dict_batch_and_2d_and_1d_inputs():
    signal = torch.from_numpy(tone(22050, 0.5))
    stereo = torch.stack([signal, -signal])
    from_dict = load_audio({"waveform": stereo[None], "sample_rate": 22050})
    assert from_dict.original_channels == 2 and np.abs(from_dict.samples).max() < 1e-6  # L and -L cancel
    same = torch.stack([signal, signal])
    two_d = load_audio(same, sample_rate=22050)
    one_d = load_audio(signal, sample_rate=22050)
    assert np.allclose(two_d.samples, one_d.samples, atol=1e-7)
    assert len(one_d.samples) == 8000


def test_integer_and_half_waveforms():
    signal = tone(16000, 0.1)
    as_int16 = torch.from_numpy(np.round(signal * 32767).astype(np.int16))
    assert np.allclose(load_audio(as_int16, sample_rate=16000).samples, signal, atol=1e-4)
    as_half = torch.from_numpy(signal).half()
    assert np.allclose(load_audio(as_half, sample_rate=16000).samples, signal, atol=1e-3)


FIXTURE = Path(__file__).parent / "fixtures" / "resample"


def test_44k_stereo_file_gives_ffmpegs_16k_samples_bit_exactly(tmp_path):
    """The official `ffmpeg -i in.wav -ar 16000 out.wav` + librosa mono mix, pinned by samples the
    ffmpeg command line made (tests/fixtures/resample/make_ffmpeg_reference.py)."""
    sys.path.insert(0, str(FIXTURE))
    try:
        from reference_signal import stereo_samples, write_test_wav
    finally:
        sys.path.remove(str(FIXTURE))
    expected = np.load(FIXTURE / "ffmpeg_16k.npy")
    assert expected.shape == (2, 9600) and expected.dtype == np.int16
    mono = (expected / np.float32(32768)).astype(np.float32).mean(axis=0)
    clip = load_audio(write_test_wav(tmp_path / "in.wav"))
    assert clip.original_channels == 2 and clip.original_sample_rate == 44100
    assert np.array_equal(clip.samples, mono)
    # the same samples as a float waveform (a ComfyUI AUDIO): swresample then computes in float, as
    # the command line does for a float file, which is within a few 16-bit levels of its fixed-point path
    waveform = torch.from_numpy(stereo_samples() / np.float32(32768))
    from_dict = load_audio({"waveform": waveform[None], "sample_rate": 44100})
    assert np.abs(from_dict.samples - mono).max() <= 4 / 32768


def test_resample_length_and_identity():
    x = np.random.default_rng(0).standard_normal(48000)
    assert resample(x, 16000, 16000) is x
    assert len(resample(x, 48000, 16000)) == 16000
    assert len(resample(x[:44100], 44100, 16000)) == 16000


@pytest.mark.parametrize(
    "source, kwargs, message",
    [
        ({"waveform": torch.zeros(2, 1, 100), "sample_rate": 16000}, {}, "batch of 2 tracks"),
        ({"waveform": torch.zeros(1, 0, 100), "sample_rate": 16000}, {}, "no channels"),
        ({"waveform": torch.zeros(1, 1, 0), "sample_rate": 16000}, {}, "empty"),
        ({"waveform": torch.zeros(1, 1, 10)}, {}, "needs 'waveform' and 'sample_rate'"),
        ({"waveform": torch.zeros(1, 1, 10), "sample_rate": 0}, {}, "invalid sample rate"),
        ({"waveform": torch.zeros(1, 1, 10), "sample_rate": 22050.5}, {}, "invalid sample rate"),
        ({"waveform": torch.zeros(1, 2, 3, 4), "sample_rate": 16000}, {}, "must be \\[channels, samples\\]"),
        (torch.zeros(10), {}, "needs its sample_rate"),
        (12345, {}, "unsupported audio input"),
    ],
)
def test_bad_waveform_inputs(source, kwargs, message):
    with pytest.raises(AudioLoadError, match=message):
        load_audio(source, **kwargs)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_samples_are_rejected(bad):
    waveform = torch.zeros(1, 2, 1000)
    waveform[0, 1, 500] = bad
    with pytest.raises(AudioLoadError, match="'clip.wav' contains 1 NaN/inf samples"):
        load_audio({"waveform": waveform, "sample_rate": 16000, "filename": "clip.wav"})


def test_missing_empty_corrupt_and_audioless_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.wav"):
        load_audio(tmp_path / "nope.wav")
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    with pytest.raises(AudioLoadError, match="empty.wav.*0 bytes"):
        load_audio(empty)
    corrupt = tmp_path / "corrupt.mp3"
    corrupt.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(AudioLoadError, match="corrupt.mp3"):
        load_audio(corrupt)
    truncated = tmp_path / "truncated.wav"
    truncated.write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt ")
    with pytest.raises(AudioLoadError, match="truncated.wav"):
        load_audio(truncated)


def test_file_without_audio_stream(tmp_path):
    from PIL import Image

    image = tmp_path / "picture.png"
    Image.new("RGB", (8, 8)).save(image)
    with pytest.raises(AudioLoadError, match="picture.png.*no audio stream"):
        load_audio(image)


def test_wav_without_samples(tmp_path):
    import wave

    path = tmp_path / "no_samples.wav"
    with wave.open(str(path), "wb") as writer:
        writer.setnchannels(1)
        writer.setsampwidth(2)
        writer.setframerate(16000)
        writer.writeframes(b"")
    with pytest.raises(AudioLoadError, match="no_samples.wav.*no samples"):
        load_audio(path)
