"""Opt-in torch.compile of the diffusion net: same video, and no recompiling after the first clips."""

import pytest
import torch

from memo_pipeline.compile import compile_diffusion_net, set_compiled
from memo_pipeline.pipeline import GenerationSettings, MemoPipeline, WindowedAudio, reference_pixels
from memo_pipeline.tiny import tiny_memo_models


class _NoVAE:  # the VAE is not compiled: a cheap stand-in keeps the tests fast
    def encode(self, frames):
        return torch.nn.functional.avg_pool2d(frames, 8)[:, :1].repeat(1, 4, 1, 1)

    def decode(self, latents):
        return torch.sigmoid(torch.nn.functional.interpolate(latents[:, :3], scale_factor=8))


@pytest.mark.slow
def test_compiled_net_does_not_recompile_per_clip_and_gives_the_same_video():
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    g = torch.Generator().manual_seed(0)
    audio = WindowedAudio(torch.randn(16, 5, 2, 16, generator=g))
    pixels = reference_pixels(torch.rand(64, 64, 3, generator=g))
    settings = GenerationSettings(steps=2, frames_per_clip=4, past_frames=4, init_past_frames=4)

    def video(compiled: bool):
        models = tiny_memo_models(seed=3)
        if compiled:
            compile_diffusion_net(models, backend="eager")
        graphs = []
        with torch.no_grad():
            frames = []
            for clip in MemoPipeline(models, _NoVAE()).generate(pixels, None, audio, 2, settings):
                frames.append(clip.frames)
                graphs.append(counters["stats"]["unique_graphs"])
        return torch.cat(frames), graphs

    plain, _ = video(False)
    compiled, graphs = video(True)
    assert graphs[1] > 0 and graphs[1] == graphs[2] == graphs[3]  # clips 3 and 4 compile nothing new
    torch.testing.assert_close(compiled, plain, atol=1e-5, rtol=1e-5)


def test_set_compiled_switches_a_cached_model_both_ways():
    models = tiny_memo_models(seed=4)
    net = models.diffusion_net
    plain_forward = net.forward
    set_compiled(models, True)
    compiled_forward = net.forward
    assert net._memo_compiled and vars(net)["forward"] is compiled_forward
    set_compiled(models, True)  # compiling twice keeps the first compile
    assert net.forward is compiled_forward
    set_compiled(models, False)
    assert not net._memo_compiled and "forward" not in vars(net)
    assert net.forward == plain_forward
    set_compiled(models, False)  # no-op when not compiled
    assert net.forward == plain_forward


def test_a_compiler_that_cannot_run_says_how_to_run_without_it():
    from memo_pipeline.compile import CompileFailed

    def no_compiler(graph, example_inputs):
        raise RuntimeError("no C++ compiler here")

    torch._dynamo.reset()
    models = tiny_memo_models(seed=5)
    compile_diffusion_net(models, backend=no_compiler)
    audio = WindowedAudio(torch.randn(4, 5, 2, 16))
    settings = GenerationSettings(steps=1, frames_per_clip=4, past_frames=4, init_past_frames=4)
    with pytest.raises(CompileFailed, match="no --compile"):
        next(MemoPipeline(models, _NoVAE()).generate(reference_pixels(torch.rand(64, 64, 3)), None, audio, 2, settings))
