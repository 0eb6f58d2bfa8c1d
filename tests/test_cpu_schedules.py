"""CPU schedules that change how the work is laid out, never what it computes: layer outputs in
the plain NCHW layout, heap reuse during a generation, one VAE frame per call, the linear
layers of the two big networks on oneDNN and upsampling convolutions by output phase."""

from __future__ import annotations

import pytest
import torch

import memo_pipeline.cpu_kernels as cpu_kernels
import memo_pipeline.heap as heap
from memo_pipeline.models.audio_attention import AudioModule
from memo_pipeline.models.motion_memory import MotionMemory
from memo_pipeline.models.motion_module import MotionModule
from memo_pipeline.models.spatial_attention import SpatialTransformer
from memo_pipeline.models.upsample import PhaseUpsample2D, nearest_upsample_conv, use_phase_upsampling
from memo_pipeline.tiny import randomize
from memo_pipeline.vae import auto_batch_size


def test_layer_outputs_are_plain_nchw():
    """The next convolution gets NCHW input: a channels-last input made oneDNN convert the
    1280-channel weights on every call and ran the deepest convolutions at a third of the speed."""
    frames = torch.randn(6, 32, 4, 4)
    with torch.no_grad():
        spatial = randomize(SpatialTransformer(4, 8, 32, 24), seed=0).eval()
        out = spatial(frames, torch.randn(2, 16, 32), torch.randn(2, 4, 24), 3)
        assert out.is_contiguous()
        audio_module = randomize(AudioModule(4, 8, 32, 16), seed=0).eval()
        out, _ = audio_module(frames, torch.randn(6, 4, 16), torch.tensor([9, 2]))
        assert out.is_contiguous()
        motion = randomize(MotionModule(32, num_attention_heads=4, temporal_position_encoding=True), seed=0).eval()
        out = motion(frames, frames[:4], 3, MotionMemory(), "reset")
        assert out.is_contiguous()


class _Recorder:
    def __init__(self):
        self.calls = []

    def mallopt(self, option, value):
        self.calls.append(("mallopt", option, value))
        return 1

    def trim(self, pad):
        self.calls.append(("trim", pad))
        return 1


def test_keep_freed_memory_sets_and_restores_thresholds(monkeypatch):
    recorder = _Recorder()
    monkeypatch.setattr(heap, "_MALLOPT", recorder.mallopt)
    monkeypatch.setattr(heap, "_MALLOC_TRIM", recorder.trim)
    with pytest.raises(RuntimeError):
        with heap.keep_freed_memory():
            assert recorder.calls == [("mallopt", heap.M_MMAP_THRESHOLD, heap.MMAP_THRESHOLD_MAX),
                                      ("mallopt", heap.M_MMAP_MAX, 0),
                                      ("mallopt", heap.M_TRIM_THRESHOLD, heap.TRIM_THRESHOLD_KEEP)]
            raise RuntimeError("an interrupted generation still restores the heap settings")
    assert recorder.calls[3:] == [("mallopt", heap.M_MMAP_MAX, heap.MMAP_MAX_DEFAULT),
                                  ("mallopt", heap.M_TRIM_THRESHOLD, 2 * heap.MMAP_THRESHOLD_MAX), ("trim", 0)]


def test_keep_freed_memory_without_glibc(monkeypatch):
    monkeypatch.setattr(heap, "_MALLOPT", None)
    with heap.keep_freed_memory():
        pass


def test_keep_freed_memory_with_the_real_allocator():
    with heap.keep_freed_memory():
        for size in (8 << 20, 96 << 20):  # below and above glibc's largest mmap threshold
            block = torch.empty(size, dtype=torch.uint8).fill_(1)
            del block
            block = torch.empty(size, dtype=torch.uint8).fill_(2)
            assert int(block[-1]) == 2
    block = torch.empty(96 << 20, dtype=torch.uint8).fill_(3)  # the default settings work again
    assert int(block[0]) == 3


def test_generation_runs_inside_keep_freed_memory(monkeypatch):
    from diffusers import AutoencoderKL

    from memo_pipeline.pipeline import GenerationSettings, MemoPipeline, reference_pixels
    from memo_pipeline.tiny import TINY_VAE, TINY_WAV2VEC, tiny_memo_models
    from memo_pipeline.vae import DiffusersVAE

    recorder = _Recorder()
    monkeypatch.setattr(heap, "_MALLOPT", recorder.mallopt)
    monkeypatch.setattr(heap, "_MALLOC_TRIM", recorder.trim)
    pipeline = MemoPipeline(tiny_memo_models(), DiffusersVAE(randomize(AutoencoderKL(**TINY_VAE), seed=5)))
    image = reference_pixels(torch.rand(32, 32, 3))
    audio = torch.randn(4, 5, TINY_WAV2VEC["num_hidden_layers"], TINY_WAV2VEC["hidden_size"])
    settings = GenerationSettings(steps=1, frames_per_clip=2, past_frames=2, init_past_frames=2, guidance_scale=1.0)
    clips = pipeline.generate(image, None, audio, settings=settings)
    next(clips)
    assert ("mallopt", heap.M_TRIM_THRESHOLD, heap.TRIM_THRESHOLD_KEEP) in recorder.calls
    assert ("mallopt", heap.M_TRIM_THRESHOLD, 2 * heap.MMAP_THRESHOLD_MAX) not in recorder.calls
    list(clips)
    assert recorder.calls[-2:] == [("mallopt", heap.M_TRIM_THRESHOLD, 2 * heap.MMAP_THRESHOLD_MAX), ("trim", 0)]


def test_vae_uses_one_frame_per_call_on_cpu():
    assert auto_batch_size("cpu", 128, 128) == 1
    assert auto_batch_size("cpu", 512, 512) == 1


class _CountingMatmul:
    def __init__(self):
        self.calls = 0

    def __call__(self, x, weight, bias, *rest):
        self.calls += 1
        return cpu_kernels._onednn_matmul()(x, weight, bias, *rest)


needs_onednn = pytest.mark.skipif(cpu_kernels._onednn_matmul() is None, reason="this PyTorch has no oneDNN")


@needs_onednn
def test_onednn_linear_routes_float32_cpu_linear_layers(monkeypatch):
    counting = _CountingMatmul()
    monkeypatch.setattr(cpu_kernels, "_LINEAR_POINTWISE", counting)

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(8, 5)

        @cpu_kernels.onednn_linear
        def forward(self, sample):
            return self.layer(sample)

    net = randomize(Net(), seed=0)
    x = torch.randn(3, 7, 8)
    with torch.no_grad():
        out = net(x)
        assert counting.calls == 1
        torch.testing.assert_close(out, torch.nn.functional.linear(x, net.layer.weight, net.layer.bias))
        with cpu_kernels._OneDNNLinear():  # keyword arguments are routed too
            by_name = torch.nn.functional.linear(input=x, weight=net.layer.weight, bias=net.layer.bias)
        assert counting.calls == 2
        torch.testing.assert_close(by_name, out, atol=0, rtol=0)
        net.double()(x.double())  # other dtypes keep PyTorch's own kernel
        net.float()
        with torch.backends.mkldnn.flags(enabled=False):  # as does a user who switched oneDNN off
            net(x)
    assert counting.calls == 2
    net(x).sum().backward()  # training needs the autograd of F.linear
    assert counting.calls == 2 and net.layer.weight.grad is not None
    monkeypatch.setattr(cpu_kernels, "_compiling", lambda: True)
    with torch.no_grad():
        net(x)
    assert counting.calls == 2


@needs_onednn
def test_both_big_networks_run_their_linear_layers_on_onednn(monkeypatch):
    """The diffusion and reference nets are where the time goes; their golden fixtures pass through
    this path (python -m memo_pipeline.parity)."""
    from memo_pipeline.models.diffusion_net import DiffusionNet
    from memo_pipeline.models.reference_net import ReferenceNet

    for network in (DiffusionNet, ReferenceNet):
        assert network.forward.__wrapped__ is not None  # decorated by onednn_linear
    counting = _CountingMatmul()
    monkeypatch.setattr(cpu_kernels, "_LINEAR_POINTWISE", counting)
    assert cpu_kernels.onednn_linear_active(torch.zeros(1))
    assert not cpu_kernels.onednn_linear_active(torch.zeros(1, dtype=torch.bfloat16))
    from memo_pipeline.tiny import tiny_memo_models

    models = tiny_memo_models()
    with torch.no_grad():
        models.reference_net(torch.randn(2, 4, 8, 8), torch.zeros(()), torch.randn(2, 4, models.reference_net.config.cross_attention_dim))
    assert counting.calls > 10


@pytest.mark.parametrize("shape", [(2, 8, 6, 4, 5), (1, 3, 4, 7, 4), (3, 16, 16, 8, 8)])  # n, c, out, h, w
def test_phase_upsampling_is_interpolate_then_conv(shape):
    n, c, out, h, w = shape
    g = torch.Generator().manual_seed(sum(shape))
    x = torch.randn(n, c, h, w, generator=g, dtype=torch.float64)
    weight = torch.randn(out, c, 3, 3, generator=g, dtype=torch.float64)
    bias = torch.randn(out, generator=g, dtype=torch.float64)
    official = torch.nn.functional.conv2d(torch.nn.functional.interpolate(x, scale_factor=2.0, mode="nearest"),
                                          weight, bias, padding=1)
    torch.testing.assert_close(nearest_upsample_conv(x, weight, bias), official, atol=1e-12, rtol=0)
    torch.testing.assert_close(nearest_upsample_conv(x, weight, None), official - bias.view(1, -1, 1, 1),
                               atol=1e-12, rtol=0)


def test_phase_upsample_module_keeps_keys_and_falls_back(monkeypatch):
    from diffusers.models.upsampling import Upsample2D

    plain = randomize(Upsample2D(8, use_conv=True, out_channels=6), seed=3)
    phase = randomize(PhaseUpsample2D(8, use_conv=True, out_channels=6), seed=3)
    assert list(phase.state_dict()) == list(plain.state_dict())
    calls = []
    import memo_pipeline.models.upsample as upsample

    def counting(*args):
        calls.append(args[0].shape)
        return nearest_upsample_conv(*args)

    monkeypatch.setattr(upsample, "nearest_upsample_conv", counting)
    with torch.no_grad():
        for rows, size, output_size in ((16, (4, 5), None), (16, (4, 4), (8, 8)), (16, (4, 4), (9, 9)), (2, (4, 4), None)):
            x = torch.randn(rows, 8, *size)
            torch.testing.assert_close(phase(x, output_size), plain(x, output_size), atol=1e-5, rtol=1e-5)
    # other output sizes and fewer than MIN_POSITIONS input positions run the original
    assert calls == [(16, 8, 4, 5), (16, 8, 4, 4)]
    other = Upsample2D(8, use_conv=False)
    assert use_phase_upsampling(torch.nn.Sequential(other, Upsample2D(8, use_conv=True))) == 1
    assert type(other) is Upsample2D


def test_all_three_networks_upsample_by_phases():
    from diffusers import AutoencoderKL

    from memo_pipeline.tiny import TINY_VAE, tiny_memo_models
    from memo_pipeline.vae import DiffusersVAE

    models = tiny_memo_models()
    for net in (models.diffusion_net, models.reference_net):
        upsamplers = [m for m in net.modules() if hasattr(m, "use_conv_transpose")]
        assert upsamplers and all(type(m) is PhaseUpsample2D for m in upsamplers)
    vae = randomize(AutoencoderKL(**TINY_VAE), seed=5)
    latents = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        plain = vae.decode(latents).sample
        DiffusersVAE(vae)  # gives the decoder its phase upsamplers, in place
        assert any(type(m) is PhaseUpsample2D for m in vae.decoder.modules())
        torch.testing.assert_close(vae.decode(latents).sample, plain, atol=1e-5, rtol=1e-5)
