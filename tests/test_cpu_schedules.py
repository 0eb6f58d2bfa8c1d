"""CPU schedules that change how the work is laid out, never what it computes: layer outputs in
the plain NCHW layout, heap reuse during a generation and one VAE frame per call."""

from __future__ import annotations

import pytest
import torch

import memo_pipeline.heap as heap
from memo_pipeline.models.audio_attention import AudioModule
from memo_pipeline.models.motion_memory import MotionMemory
from memo_pipeline.models.motion_module import MotionModule
from memo_pipeline.models.spatial_attention import SpatialTransformer
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

