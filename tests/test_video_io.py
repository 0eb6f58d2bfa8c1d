"""Streaming mp4 writer: frame counts, rates, audio mux, memory and failure cleanup (PyAV)."""

from __future__ import annotations

import math
import os
from fractions import Fraction

import av
import numpy as np
import psutil
import pytest
import torch

from memo_pipeline.video_io import VideoWriter, as_fps_fraction, read_video_info, write_video

FAST = {"preset": "ultrafast"}


def gradient_clip(frames, size=64, offset=0):
    """Float clip [F, H, W, 3] whose content changes per frame."""
    h = w = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    out = np.empty((frames, h, w, 3), np.float32)
    for i in range(frames):
        t = (offset + i) / 10.0
        out[i, ..., 0] = 0.5 + 0.5 * np.sin(xx / 7 + t)
        out[i, ..., 1] = 0.5 + 0.5 * np.cos(yy / 5 - t)
        out[i, ..., 2] = (xx + yy) / (h + w)
    return out


def sine(seconds, sr, channels=1, freq=440.0):
    t = np.arange(int(round(seconds * sr))) / sr
    mono = 0.3 * np.sin(2 * np.pi * freq * t).astype(np.float32)
    return mono if channels == 1 else np.stack([mono, 0.5 * mono])


def leftovers(folder):
    return [n for n in os.listdir(folder) if n.endswith(".part")]


def decode_frames(path):
    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


# ---------------------------------------------------------------- basic content


@pytest.mark.parametrize("size", [64, 96])
def test_video_only_frame_count_size_fps(tmp_path, size):
    out = tmp_path / "v.mp4"
    with VideoWriter(out, 25, **FAST) as w:
        for k in range(3):
            assert w.write(gradient_clip(8, size, offset=8 * k)) == 8
        assert w.frames_written == 24
    info = read_video_info(out)
    assert info["frames"] == 24
    assert (info["width"], info["height"]) == (size, size)
    assert info["fps"] == 25 and info["fps_fraction"] == Fraction(25)
    assert info["video_codec"] == "h264" and info["pix_fmt"] == "yuv420p"
    assert info["audio_duration"] is None and info["audio_sample_rate"] is None
    assert leftovers(tmp_path) == []


def test_pixels_survive_encoding(tmp_path):
    clip = gradient_clip(6, 96)
    out = tmp_path / "q.mp4"
    write_video(out, clip, 30, crf=10, **FAST)
    decoded = decode_frames(out).astype(np.float32) / 255
    assert decoded.shape == clip.shape
    assert np.mean(np.abs(decoded - clip)) < 0.03  # lossy, but the same pictures in order
    # frames are not shuffled: each decoded frame is closest to its source frame
    for i in range(len(clip)):
        errs = [np.mean(np.abs(decoded[i] - c)) for c in clip]
        assert int(np.argmin(errs)) == i


def test_uint8_and_torch_inputs(tmp_path):
    clip = gradient_clip(4, 64)
    out = tmp_path / "t.mp4"
    with VideoWriter(out, 24, **FAST) as w:
        w.write((clip * 255).round().astype(np.uint8))
        w.write(torch.from_numpy(clip).to(torch.bfloat16))
        w.write(torch.from_numpy(clip))
        w.write(np.zeros((0, 64, 64, 3), np.float32))  # empty clip is a no-op
    assert read_video_info(out)["frames"] == 12


@pytest.mark.parametrize(
    "fps, expected",
    [
        (25, Fraction(25)),
        (30, Fraction(30)),
        (29.97, Fraction(30000, 1001)),
        (Fraction(24000, 1001), Fraction(24000, 1001)),
        (12.5, Fraction(25, 2)),
    ],
)
def test_fractional_fps(tmp_path, fps, expected):
    assert as_fps_fraction(fps) == expected
    out = tmp_path / "f.mp4"
    audio = (sine(1.0, 16000), 16000)
    n = write_video(out, gradient_clip(40), fps, audio, **FAST)
    info = read_video_info(out)
    assert info["fps_fraction"] == expected
    assert n == info["frames"] == min(40, math.ceil(expected))  # 1 s of audio caps the frames


# ----------------------------------------------------------------------- audio


@pytest.mark.parametrize("channels", [1, 2])
@pytest.mark.parametrize("sr", [16000, 44100])
def test_audio_muxed_and_video_trimmed_to_audio(tmp_path, channels, sr):
    seconds = 1.37
    wave = sine(seconds, sr, channels)
    out = tmp_path / "a.mp4"
    fps = 25
    expected_frames = math.ceil(wave.shape[-1] * fps / sr)  # 35
    with VideoWriter(out, fps, (wave, sr), **FAST) as w:
        kept = [w.write(gradient_clip(16, offset=16 * k)) for k in range(3)]  # 48 frames offered
    assert kept == [16, 16, expected_frames - 32]
    assert w.frames_written == expected_frames and w.frames_dropped == 48 - expected_frames
    info = read_video_info(out)
    assert info["frames"] == expected_frames
    assert info["audio_sample_rate"] == sr and info["audio_channels"] == channels
    assert info["audio_codec"] == "aac"
    assert abs(info["audio_duration"] - wave.shape[-1] / sr) <= 1024 / sr


def test_audio_cut_when_video_is_shorter(tmp_path):
    sr = 16000
    wave = sine(3.0, sr, 2)
    out = tmp_path / "short.mp4"
    with VideoWriter(out, 25, (wave, sr), **FAST) as w:
        w.write(gradient_clip(20))  # 0.8 s of video
    info = read_video_info(out)
    assert info["frames"] == 20
    assert abs(info["audio_duration"] - 0.8) <= 1024 / sr


def test_audio_content_is_the_input(tmp_path):
    sr = 44100
    wave = sine(1.0, sr, 1, freq=1000.0)
    out = tmp_path / "tone.mp4"
    write_video(out, gradient_clip(25), 25, (wave, sr), **FAST)
    with av.open(str(out)) as c:
        pcm = np.concatenate([f.to_ndarray().reshape(-1) for f in c.decode(audio=0)])
    spectrum = np.abs(np.fft.rfft(pcm[2048:2048 + 32768]))
    peak_hz = np.argmax(spectrum) * sr / 32768
    assert abs(peak_hz - 1000.0) < 5.0
    assert 0.2 < np.max(np.abs(pcm)) < 0.4


def test_audio_rate_not_supported_by_aac_is_resampled(tmp_path):
    wave = sine(1.0, 22000, 1)
    out = tmp_path / "r.mp4"
    write_video(out, gradient_clip(30), 30, (wave, 22000), **FAST)
    info = read_video_info(out)
    assert info["audio_sample_rate"] == 48000
    assert abs(info["audio_duration"] - 1.0) <= 1024 / 48000
    assert info["frames"] == 30


def test_int16_and_torch_audio(tmp_path):
    wave = (sine(0.5, 16000, 2) * 32767).astype(np.int16)
    write_video(tmp_path / "i.mp4", gradient_clip(13), 25, (wave, 16000), **FAST)
    write_video(tmp_path / "t.mp4", gradient_clip(13), 25, (torch.from_numpy(sine(0.5, 16000)), 16000), **FAST)
    for name in ("i.mp4", "t.mp4"):
        info = read_video_info(tmp_path / name)
        assert info["frames"] == 13 and abs(info["audio_duration"] - 0.5) <= 1024 / 16000


def test_write_video_accepts_iterable_of_clips(tmp_path):
    clips = (gradient_clip(5, offset=5 * k) for k in range(4))
    assert write_video(tmp_path / "g.mp4", clips, 30, **FAST) == 20
    assert read_video_info(tmp_path / "g.mp4")["frames"] == 20


# ---------------------------------------------------------------------- memory


def test_memory_stays_bounded_over_many_clips(tmp_path):
    """50 float clips (157 MB if kept) must not pile up in the writer."""
    proc = psutil.Process()
    out = tmp_path / "long.mp4"
    frames_per_clip, size = 16, 128
    with VideoWriter(out, 25, (sine(40.0, 16000), 16000), **FAST) as w:
        for k in range(5):
            w.write(gradient_clip(frames_per_clip, size, offset=k * frames_per_clip))
        baseline = proc.memory_info().rss
        for k in range(5, 50):
            w.write(gradient_clip(frames_per_clip, size, offset=k * frames_per_clip))
        growth = proc.memory_info().rss - baseline
    held_if_buffered = 45 * frames_per_clip * size * size * 3 * 4
    assert growth < 40 * 2**20, f"RSS grew by {growth / 2**20:.1f} MiB"
    assert growth < held_if_buffered / 3
    info = read_video_info(out)
    assert info["frames"] == 800 and abs(info["audio_duration"] - 32.0) <= 1024 / 16000


# ------------------------------------------------------------- failure cleanup


def test_exception_inside_with_leaves_no_file(tmp_path):
    out = tmp_path / "fail.mp4"
    with pytest.raises(RuntimeError, match="boom"):
        with VideoWriter(out, 25, (sine(2.0, 16000), 16000), **FAST) as w:
            w.write(gradient_clip(10))
            raise RuntimeError("boom")
    assert not out.exists() and leftovers(tmp_path) == []


def test_cancel_keeps_existing_file_untouched(tmp_path):
    out = tmp_path / "keep.mp4"
    out.write_bytes(b"previous result")
    with pytest.raises(KeyboardInterrupt):
        with VideoWriter(out, 25, **FAST) as w:
            w.write(gradient_clip(10))
            raise KeyboardInterrupt
    assert out.read_bytes() == b"previous result"
    assert leftovers(tmp_path) == []


def test_successful_write_replaces_existing_file(tmp_path):
    out = tmp_path / "old.mp4"
    out.write_bytes(b"old")
    write_video(out, gradient_clip(4), 25, **FAST)
    assert read_video_info(out)["frames"] == 4


def test_bad_frame_mid_stream_aborts_cleanly(tmp_path):
    out = tmp_path / "nan.mp4"
    bad = gradient_clip(4)
    bad[2, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        with VideoWriter(out, 25, **FAST) as w:
            w.write(gradient_clip(4))
            w.write(bad)
    assert not out.exists() and leftovers(tmp_path) == []


def test_explicit_abort_and_close_without_frames(tmp_path):
    w = VideoWriter(tmp_path / "x.mp4", 25, **FAST)
    w.write(gradient_clip(3))
    w.abort()
    assert w.closed and not (tmp_path / "x.mp4").exists() and leftovers(tmp_path) == []
    with pytest.raises(RuntimeError, match="closed"):
        w.write(gradient_clip(3))
    empty = VideoWriter(tmp_path / "e.mp4", 25, **FAST)
    with pytest.raises(ValueError, match="no frames"):
        empty.close()
    assert not (tmp_path / "e.mp4").exists() and leftovers(tmp_path) == []


# ------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "clip, msg",
    [
        (np.zeros((2, 63, 64, 3), np.float32), "even width and height"),
        (np.zeros((2, 64, 64), np.float32), r"\[frames, height, width, 3\]"),
        (np.zeros((64, 64, 3), np.float32), r"\[frames, height, width, 3\]"),
        (np.zeros((2, 64, 64, 4), np.float32), r"\[frames, height, width, 3\]"),
        (np.zeros((2, 64, 64, 3), np.int32), "float in"),
    ],
)
def test_bad_clips(tmp_path, clip, msg):
    with pytest.raises(ValueError, match=msg):
        with VideoWriter(tmp_path / "b.mp4", 25, **FAST) as w:
            w.write(clip)
    assert leftovers(tmp_path) == [] and not (tmp_path / "b.mp4").exists()


def test_clip_size_must_not_change(tmp_path):
    with pytest.raises(ValueError, match="all clips must match"):
        with VideoWriter(tmp_path / "s.mp4", 25, **FAST) as w:
            w.write(gradient_clip(2, 64))
            w.write(gradient_clip(2, 96))


@pytest.mark.parametrize(
    "kwargs, exc, msg",
    [
        (dict(fps=0), ValueError, "positive"),
        (dict(fps=float("nan")), ValueError, "finite"),
        (dict(fps="25"), ValueError, "number"),
        (dict(crf=60), ValueError, "crf"),
        (dict(preset="turbo"), ValueError, "preset"),
        (dict(audio=np.zeros(100)), ValueError, "pair"),
        (dict(audio=(np.zeros((3, 100)), 16000)), ValueError, "1-2 channels"),
        (dict(audio=(np.zeros((100, 2)), 16000)), ValueError, "1-2 channels"),
        (dict(audio=(np.zeros(0), 16000)), ValueError, "empty"),
        (dict(audio=(np.full(10, np.inf), 16000)), ValueError, "NaN or infinite"),
        (dict(audio=(np.zeros(10), 0)), ValueError, "sample rate"),
        (dict(audio=(np.zeros(10), 16000.0)), ValueError, "sample rate"),
    ],
)
def test_bad_arguments(tmp_path, kwargs, exc, msg):
    args = dict(fps=25)
    args.update(kwargs)
    with pytest.raises(exc, match=msg):
        VideoWriter(tmp_path / "z.mp4", **args)
    assert os.listdir(tmp_path) == []


def test_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="folder"):
        VideoWriter(tmp_path / "nope" / "v.mp4", 25)
    with pytest.raises(FileNotFoundError):
        read_video_info(tmp_path / "nope.mp4")


def test_read_info_rejects_non_video(tmp_path):
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video at all" * 10)
    with pytest.raises(ValueError, match="not a readable"):
        read_video_info(junk)
