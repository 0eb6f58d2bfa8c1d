"""MDX-Net vocal separation: signal path checked with tiny synthetic ONNX graphs."""

from __future__ import annotations

import logging
import sys

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from memo_pipeline.audio import separation as sep
from memo_pipeline.audio.separation import (
    KIM_VOCAL_2,
    MDXParams,
    MDXVocalSeparator,
    VocalSeparationUnavailable,
    mdx_istft,
    mdx_stft,
    separate_vocals,
    uvr_model_hash,
)

SR = sep.MODEL_SAMPLE_RATE
# Small parameters keep multi-chunk tests fast: chunk = 64 * 63 = 4032 samples.
SMALL = MDXParams(n_fft=256, dim_f=100, dim_t=64, compensate=1.0, hop=64, overlap=0.25)


def _save_model(path, nodes, initializers=(), dim_f=3072, dim_t=256, out_shape=None):
    shape = ["batch", 4, dim_f, dim_t]
    graph = helper.make_graph(
        nodes,
        "mdx_stand_in",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, out_shape or shape)],
        initializer=list(initializers),
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return str(path)


def identity_model(path, dim_f=3072, dim_t=256):
    return _save_model(path, [helper.make_node("Identity", ["input"], ["output"])], dim_f=dim_f, dim_t=dim_t)


def bias_model(path, dim_f=3072, dim_t=256, scale=5.0):
    """output = input + fixed noise: not odd, so denoise (f(x) - f(-x)) / 2 removes the noise."""
    noise = scale * np.random.default_rng(7).standard_normal((1, 4, dim_f, dim_t))
    b = numpy_helper.from_array(noise.astype(np.float32), "bias")
    return _save_model(path, [helper.make_node("Add", ["input", "bias"], ["output"])], [b], dim_f, dim_t)


def mask_model(path, mask):
    """output = input * mask[None, None, :, None] (a fixed frequency mask)."""
    m = numpy_helper.from_array(np.asarray(mask, np.float32).reshape(1, 1, -1, 1), "mask")
    dim_f = len(mask)
    return _save_model(path, [helper.make_node("Mul", ["input", "mask"], ["output"])], [m], dim_f, 256)


def tones(freqs, seconds, sr, amps=None, phase=0.3, fade=0.05):
    """Sum of sines with raised-cosine fades, so the ends add no broadband click."""
    t = np.arange(int(seconds * sr)) / sr
    amps = amps or [1.0 / len(freqs)] * len(freqs)
    x = sum(a * np.sin(2 * np.pi * f * t + phase * (i + 1)) for i, (f, a) in enumerate(zip(freqs, amps)))
    ramp = min(int(fade * sr), len(t) // 2)
    if ramp:
        edge = 0.5 - 0.5 * np.cos(np.pi * np.arange(ramp) / ramp)
        x[:ramp] *= edge
        x[len(t) - ramp :] *= edge[::-1]
    return x


def band_power(x, sr, lo, hi):
    spec = np.abs(np.fft.rfft(x)) ** 2
    freqs = np.fft.rfftfreq(len(x), 1 / sr)
    return spec[(freqs >= lo) & (freqs < hi)].sum()


def rel_err(a, b):
    return float(np.sqrt(np.mean((a - b) ** 2)) / np.sqrt(np.mean(b**2)))


# ------------------------------------------------------------------------ STFT


def test_stft_matches_torch_layout():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 2, 5000)).astype(np.float32)
    ours = mdx_stft(x, 512, 128, 200)
    window = torch.hann_window(512, periodic=True)
    ref = torch.stft(torch.from_numpy(x).reshape(4, -1), 512, 128, window=window, center=True, return_complex=True)
    ref = torch.view_as_real(ref).permute(0, 3, 1, 2).reshape(2, 4, 257, -1)[:, :, :200]
    assert ours.shape == (2, 4, 200, 1 + 5000 // 128)
    np.testing.assert_allclose(ours, ref.numpy(), atol=2e-4, rtol=1e-4)
    # channel order is [L.re, L.im, R.re, R.im]
    np.testing.assert_allclose(ours[1, 2], ref.numpy()[1, 2], atol=2e-4)


def test_istft_inverts_stft_full_band():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, 2, 64 * 40)).astype(np.float32)
    y = mdx_istft(mdx_stft(x, 256, 64, 129), 256, 64)
    assert y.shape == x.shape
    np.testing.assert_allclose(y, x, atol=1e-4)


def test_istft_matches_torch_with_cut_bins():
    rng = np.random.default_rng(2)
    spec = rng.standard_normal((1, 4, 100, 30)).astype(np.float32)
    ours = mdx_istft(spec, 256, 64)
    full = np.zeros((2, 2, 129, 30), np.float32)
    full[:, :, :100] = spec.reshape(2, 2, 100, 30)
    cplx = torch.complex(torch.from_numpy(full[:, 0]), torch.from_numpy(full[:, 1]))
    ref = torch.istft(cplx, 256, 64, window=torch.hann_window(256, periodic=True), center=True)
    np.testing.assert_allclose(ours[0], ref.numpy(), atol=1e-4)


def test_stft_rejects_bad_shapes():
    with pytest.raises(ValueError, match="batch, 2"):
        mdx_stft(np.zeros((1, 1, 1000), np.float32), 256, 64, 100)
    with pytest.raises(ValueError, match="more than"):
        mdx_stft(np.zeros((1, 2, 100), np.float32), 256, 64, 100)
    with pytest.raises(ValueError, match="batch, 4"):
        mdx_istft(np.zeros((1, 2, 100, 5), np.float32), 256, 64)


# ------------------------------------------------------------------- parameters


def test_kim_vocal_2_parameters():
    p = KIM_VOCAL_2
    assert (p.n_fft, p.hop, p.dim_f, p.dim_t, p.compensate, p.overlap) == (7680, 1024, 3072, 256, 1.009, 0.25)
    assert p.chunk_size == 261120 and p.trim == 3840 and p.step == 195840
    assert sep.KNOWN_MODELS[sep.KIM_VOCAL_2_HASH] is p


@pytest.mark.parametrize(
    "kwargs, msg",
    [
        (dict(n_fft=255), "even"),
        (dict(dim_f=200), "exceeds"),
        (dict(overlap=1.0), "overlap"),
        (dict(compensate=0.0), "compensate"),
        (dict(dim_t=3), "longer than n_fft"),
        (dict(hop=0), "positive"),
    ],
)
def test_params_validation(kwargs, msg):
    base = dict(n_fft=256, dim_f=100, dim_t=64, compensate=1.0, hop=64)
    base.update(kwargs)
    with pytest.raises(ValueError, match=msg):
        MDXParams(**base)


def test_uvr_hash_uses_last_10000_kib(tmp_path):
    import hashlib

    small = tmp_path / "small.bin"
    small.write_bytes(b"abc" * 1000)
    assert uvr_model_hash(small) == hashlib.md5(b"abc" * 1000).hexdigest()
    data = np.random.default_rng(3).integers(0, 256, 10000 * 1024 + 777, dtype=np.uint8).tobytes()
    big = tmp_path / "big.bin"
    big.write_bytes(data)
    assert uvr_model_hash(big) == hashlib.md5(data[777:]).hexdigest()


# --------------------------------------------------------------- full signal path


def test_identity_model_reconstructs_stereo_at_44k(tmp_path):
    """Real Kim_Vocal_2 geometry: 3 overlapping 261120-sample chunks."""
    model = identity_model(tmp_path / "id.onnx")
    left = tones([110, 440, 3000, 9000], 10.0, SR)
    right = tones([220, 1250, 5000], 10.0, SR)
    x = 0.5 * np.stack([left, right]).astype(np.float32)
    sepr = MDXVocalSeparator(model, KIM_VOCAL_2)
    y = sepr.separate(x, SR, peak_normalize=False)
    assert y.shape == x.shape and y.dtype == np.float32
    # identity up to the compensation factor (bins above 17.6 kHz are empty here)
    assert rel_err(y / KIM_VOCAL_2.compensate, x) < 1e-4
    np.testing.assert_allclose(y, x * 1.009, atol=2e-4)


@pytest.mark.parametrize("overlap", [0.0, 0.25, 0.5, 0.9])
@pytest.mark.parametrize("n", [1, 1000, 4031, 4032, 12345])
def test_chunk_blending_is_exact_for_a_time_domain_identity(tmp_path, monkeypatch, overlap, n):
    """Padding, chunking and Hann/box blending alone must give back the mix."""
    model = identity_model(tmp_path / "id_small.onnx", SMALL.dim_f, SMALL.dim_t)
    params = MDXParams(n_fft=256, dim_f=100, dim_t=64, compensate=1.0, hop=64, overlap=overlap)
    sepr = MDXVocalSeparator(model, params)
    seen = []
    monkeypatch.setattr(sepr, "_separate_chunk", lambda chunk: seen.append(chunk.shape) or chunk.copy())
    mix = np.random.default_rng(n).standard_normal((2, n)).astype(np.float32)
    out = sepr._demix(mix)
    assert out.shape == (2, n)
    np.testing.assert_allclose(out, mix, atol=1e-5)
    assert set(seen) == {(2, params.chunk_size)}
    padded = params.trim + n + (params.chunk_size - params.n_fft) + params.trim - n % (params.chunk_size - params.n_fft)
    assert len(seen) == -(-padded // params.step)


def test_identity_small_params_many_chunks(tmp_path):
    model = identity_model(tmp_path / "id_small.onnx", SMALL.dim_f, SMALL.dim_t)
    # band-limited to what dim_f=100 of 129 bins keeps at n_fft 256 (< 17.2 kHz), above bin 2 (> 517 Hz)
    x = np.stack([tones([1300, 2100, 6000, 12000], 1.3, SR), tones([1500, 4000], 1.3, SR)]) * 0.4
    for overlap in (0.25, 0.5):
        params = MDXParams(n_fft=256, dim_f=100, dim_t=64, compensate=1.0, hop=64, overlap=overlap)
        y = MDXVocalSeparator(model, params).separate(x, SR, peak_normalize=False)
        assert y.shape == x.shape
        assert rel_err(y, x) < 2e-3, overlap


def test_bins_above_dim_f_and_below_bin_3_are_removed(tmp_path):
    model = identity_model(tmp_path / "id_small.onnx", SMALL.dim_f, SMALL.dim_t)
    low, keep, high = 100.0, 3000.0, 19500.0  # bin 0.6, 17.4, 113 at 172 Hz per bin
    x = tones([low, keep, high], 1.0, SR)
    y = MDXVocalSeparator(model, SMALL).separate(x, SR, peak_normalize=False)
    assert y.shape == x.shape
    core = slice(2000, -2000)
    assert band_power(y[core], SR, 2500, 3500) > 0.9 * band_power(x[core], SR, 2500, 3500)
    assert band_power(y[core], SR, 18000, 21000) < 1e-4 * band_power(x[core], SR, 18000, 21000)
    assert band_power(y[core], SR, 50, 200) < 2e-2 * band_power(x[core], SR, 50, 200)


def test_mask_model_output_is_the_masked_band(tmp_path):
    """A real 'separation': the graph keeps 300 Hz - 3.4 kHz only."""
    freqs = np.arange(3072) * SR / 7680
    model = mask_model(tmp_path / "mask.onnx", ((freqs >= 300) & (freqs <= 3400)).astype(np.float32))
    voice, music = tones([500, 1500], 7.0, SR), tones([6000, 10000], 7.0, SR)
    mix = 0.4 * (voice + music)
    y = MDXVocalSeparator(model, KIM_VOCAL_2).separate(mix, SR, peak_normalize=False)
    assert rel_err(y / KIM_VOCAL_2.compensate, 0.4 * voice) < 0.02


def test_denoise_cancels_even_part(tmp_path):
    model = bias_model(tmp_path / "bias.onnx", SMALL.dim_f, SMALL.dim_t)
    x = np.stack([tones([1000, 5000], 0.5, SR), tones([2000], 0.5, SR)]) * 0.5
    plain = MDXVocalSeparator(model, SMALL).separate(x, SR, peak_normalize=False)
    denoised = MDXVocalSeparator(model, SMALL, denoise=True).separate(x, SR, peak_normalize=False)
    assert rel_err(denoised, x) < 2e-3
    assert rel_err(plain, x) > 0.05


def test_mono_16k_input_output_rates(tmp_path):
    model = identity_model(tmp_path / "id_small.onnx", SMALL.dim_f, SMALL.dim_t)
    sepr = MDXVocalSeparator(model, SMALL)
    x = (0.3 * tones([800, 2500], 2.0, 16000)).astype(np.float32)
    same = sepr.separate(x, 16000, peak_normalize=False)
    assert same.shape == (32000,) and same.dtype == np.float32
    core = slice(500, -500)
    assert rel_err(same[core], x[core]) < 0.01
    up = sepr.separate(x, 16000, output_sample_rate=22050, peak_normalize=False)
    assert up.shape == (44100,)
    # a 1-channel 2-D input keeps its layout
    two_d = sepr.separate(x[None], 16000, output_sample_rate=16000, peak_normalize=False)
    assert two_d.shape == (1, 32000)


def test_stereo_44k_to_16k(tmp_path):
    model = identity_model(tmp_path / "id_small.onnx", SMALL.dim_f, SMALL.dim_t)
    x = np.stack([tones([1000], 1.01, SR), tones([3000], 1.01, SR)]) * 0.5
    y = MDXVocalSeparator(model, SMALL).separate(x, SR, output_sample_rate=16000, peak_normalize=False)
    assert y.shape == (2, int(np.ceil(x.shape[1] * 16000 / SR)))
    ref = np.stack([tones([1000], 1.01, 16000), tones([3000], 1.01, 16000)])[:, : y.shape[1]] * 0.5
    assert rel_err(y[:, 300:-300], ref[:, 300:-300]) < 0.01


def test_peak_normalization_follows_audio_separator(tmp_path):
    model = identity_model(tmp_path / "id_small.onnx", SMALL.dim_f, SMALL.dim_t)
    sepr = MDXVocalSeparator(model, SMALL)
    quiet = 0.01 * tones([1000, 2000], 0.5, SR)
    loud = 3.0 * tones([1000, 2000], 0.5, SR)
    for x in (quiet, loud):
        y = sepr.separate(x, SR)  # peak_normalize=True is the default
        assert 0.6 - 1e-6 <= np.max(np.abs(y)) <= 0.9 + 1e-6
        kept = sepr.separate(x, SR, peak_normalize=False)
        assert rel_err(kept, x) < 2e-3  # level restored for peak_normalize=False


def test_silence_returns_zeros_without_nan(tmp_path):
    model = identity_model(tmp_path / "id_small.onnx", SMALL.dim_f, SMALL.dim_t)
    y = MDXVocalSeparator(model, SMALL).separate(np.zeros((2, 1000)), 8000, output_sample_rate=16000)
    assert y.shape == (2, 2000) and not np.any(y)


def test_accepts_torch_tensor(tmp_path):
    model = identity_model(tmp_path / "id_small.onnx", SMALL.dim_f, SMALL.dim_t)
    x = torch.from_numpy(0.3 * tones([1000], 0.3, SR)).to(torch.float16)
    y = separate_vocals(x, SR, model, params=SMALL, peak_normalize=False)
    assert isinstance(y, np.ndarray) and y.shape == (x.shape[0],)
    assert rel_err(y, x.float().numpy()) < 5e-3


def test_short_input_shorter_than_one_fft(tmp_path):
    model = identity_model(tmp_path / "id_small.onnx", SMALL.dim_f, SMALL.dim_t)
    y = MDXVocalSeparator(model, SMALL).separate(np.full(10, 0.1), SR)
    assert y.shape == (10,) and np.all(np.isfinite(y))


# ------------------------------------------------------------------------- errors


def test_missing_model_file(tmp_path):
    with pytest.raises(VocalSeparationUnavailable, match="not found"):
        MDXVocalSeparator(tmp_path / "Kim_Vocal_2.onnx")


def test_missing_onnxruntime(tmp_path, monkeypatch):
    model = identity_model(tmp_path / "id.onnx")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(VocalSeparationUnavailable, match="onnxruntime"):
        MDXVocalSeparator(model, KIM_VOCAL_2)


def test_corrupt_model_file(tmp_path):
    bad = tmp_path / "Kim_Vocal_2.onnx"
    bad.write_bytes(b"this is not an onnx graph")
    with pytest.raises(VocalSeparationUnavailable, match="could not load"):
        MDXVocalSeparator(bad, KIM_VOCAL_2)


def test_model_shape_mismatch(tmp_path):
    model = identity_model(tmp_path / "other.onnx", dim_f=2048, dim_t=256)
    with pytest.raises(VocalSeparationUnavailable, match="input shape"):
        MDXVocalSeparator(model, KIM_VOCAL_2)


def test_unknown_model_without_params(tmp_path):
    model = identity_model(tmp_path / "other.onnx", dim_f=2048, dim_t=128)
    with pytest.raises(VocalSeparationUnavailable, match="pass MDXParams"):
        MDXVocalSeparator(model)


def test_unknown_hash_with_kim_shape_falls_back_with_warning(tmp_path, caplog):
    model = identity_model(tmp_path / "Kim_Vocal_2.onnx")
    with caplog.at_level(logging.WARNING, logger=sep.__name__):
        sepr = MDXVocalSeparator(model)
    assert sepr.params is KIM_VOCAL_2
    assert "UVR hash" in caplog.text


def test_model_changing_shape_is_rejected_at_run(tmp_path):
    starts = numpy_helper.from_array(np.array([0], np.int64), "starts")
    ends = numpy_helper.from_array(np.array([50], np.int64), "ends")
    axes = numpy_helper.from_array(np.array([2], np.int64), "axes")
    node = helper.make_node("Slice", ["input", "starts", "ends", "axes"], ["output"])
    model = _save_model(
        tmp_path / "slice.onnx", [node], [starts, ends, axes], SMALL.dim_f, SMALL.dim_t,
        out_shape=["batch", 4, 50, SMALL.dim_t],
    )
    sepr = MDXVocalSeparator(model, SMALL)
    with pytest.raises(VocalSeparationUnavailable, match="returned shape"):
        sepr.separate(tones([1000], 0.2, SR), SR)


@pytest.mark.parametrize(
    "wave, sr, msg",
    [
        (np.zeros((3, 100)), SR, "1 or 2 channels"),
        (np.zeros((100, 2)), SR, "1 or 2 channels"),
        (np.zeros((1, 2, 100)), SR, "1 or 2 channels"),
        (np.zeros(0), SR, "empty"),
        (np.array([0.0, np.nan, 0.1]), SR, "NaN"),
        (np.zeros(100, np.int16), SR, "floating"),
        (np.zeros(100), 0, "sample_rate"),
        (np.zeros(100), 44100.0, "sample_rate"),
    ],
)
def test_bad_input(tmp_path, wave, sr, msg):
    model = identity_model(tmp_path / "id_small.onnx", SMALL.dim_f, SMALL.dim_t)
    with pytest.raises(ValueError, match=msg):
        MDXVocalSeparator(model, SMALL).separate(wave, sr)


def test_bad_output_rate(tmp_path):
    model = identity_model(tmp_path / "id_small.onnx", SMALL.dim_f, SMALL.dim_t)
    with pytest.raises(ValueError, match="output_sample_rate"):
        MDXVocalSeparator(model, SMALL).separate(np.zeros(100), SR, output_sample_rate=-1)


def test_progress_per_chunk_and_cancel(tmp_path):
    model = identity_model(tmp_path / "id_progress.onnx", SMALL.dim_f, SMALL.dim_t)
    x = np.stack([tones([1300], 1.3, SR), tones([1500], 1.3, SR)]) * 0.4
    params = MDXParams(n_fft=256, dim_f=100, dim_t=64, compensate=1.0, hop=64, overlap=0.25)
    seen = []
    MDXVocalSeparator(model, params).separate(x, SR, on_progress=seen.append)
    assert len(seen) > 3 and seen == sorted(seen) and seen[-1] == 1.0

    def cancel(fraction):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        MDXVocalSeparator(model, params).separate(x, SR, on_progress=cancel)
