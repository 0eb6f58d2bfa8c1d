"""CPU schedules that change how the work is laid out, never what it computes: layer outputs in
the plain NCHW layout, one VAE frame per call, and the CPU tuning of `memo_pipeline.cpu_tuning`
(phase upsampling, oneDNN linear layers, the heap), switched on and off through its public API."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from diffusers import AutoencoderKL
from diffusers.models.upsampling import Upsample2D

from memo_pipeline import cpu_tuning
from memo_pipeline.cpu_tuning import (apply_cpu_tuning, cpu_tuning_applied, nearest_upsample_conv, remove_cpu_tuning,
                                      tuned_allocator)
from memo_pipeline.models.audio_attention import AudioModule
from memo_pipeline.models.motion_memory import MotionMemory
from memo_pipeline.models.motion_module import MotionModule
from memo_pipeline.models.spatial_attention import SpatialTransformer
from memo_pipeline.tiny import TINY_VAE, TINY_WAV2VEC, randomize, tiny_memo_models
from memo_pipeline.vae import DiffusersVAE, auto_batch_size

from support import FIXTURES

REPO = FIXTURES.parents[1]


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


def test_vae_uses_one_frame_per_call_on_cpu():
    assert auto_batch_size("cpu", 128, 128) == 1
    assert auto_batch_size("cpu", 512, 512) == 1


# ---- phase upsampling and oneDNN linear layers -----------------------------------------------------

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


def _op_counts(run) -> dict[str, int]:
    """How often each operator ran inside `run()`, as PyTorch's profiler records it."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        run()
    return {event.key: event.count for event in prof.key_averages()}


def test_upsampler_computes_by_phase_only_where_it_pays():
    plain = randomize(Upsample2D(8, use_conv=True, out_channels=6), seed=3).eval()
    reference = {k: v.clone() for k, v in plain.state_dict().items()}
    cases = ((16, (4, 5), None, True), (16, (4, 4), (8, 8), True), (16, (4, 4), (9, 9), False), (2, (4, 4), None, False))
    with torch.no_grad():
        inputs = [(torch.randn(rows, 8, *size), output_size) for rows, size, output_size, _ in cases]
        untuned = [plain(x, size) for x, size in inputs]
        apply_cpu_tuning(plain)
        assert cpu_tuning_applied(plain)
        for (x, size), expected, (_, _, _, by_phase) in zip(inputs, untuned, cases):
            ops = _op_counts(lambda: plain(x, size))
            # other output sizes and fewer than MIN_POSITIONS input positions keep the original
            assert ("aten::upsample_nearest2d" not in ops) == by_phase
            torch.testing.assert_close(plain(x, size), expected, atol=1e-5, rtol=1e-5)
    assert plain.state_dict().keys() == reference.keys()
    no_conv = Upsample2D(8, use_conv=False)
    apply_cpu_tuning(no_conv)
    assert not cpu_tuning_applied(no_conv)


def _tiny_nets(dtype=torch.float32):
    models = tiny_memo_models()
    vae = DiffusersVAE(randomize(AutoencoderKL(**TINY_VAE), seed=5))
    models.to(dtype=dtype)
    torch.nn.Module.to(vae.vae, dtype=dtype)
    return models, vae


def _run_nets(models, vae, dtype=torch.float32):
    """Reference-net features, one diffusion-net call and a VAE decode on fixed inputs."""
    from memo_pipeline.pipeline import GenerationSettings, MemoPipeline, reference_pixels

    g = torch.Generator().manual_seed(7)
    ref = models.reference_net
    cross = ref.config.cross_attention_dim
    features = ref(torch.randn(2, 4, 16, 16, generator=g).to(dtype), torch.zeros(()),
                   torch.randn(2, 4, cross, generator=g).to(dtype))
    latents = vae.decode(torch.randn(2, 4, 16, 16, generator=g).to(dtype))
    pipeline = MemoPipeline(models, vae)
    image = reference_pixels(torch.rand(64, 64, 3, generator=g)).to(dtype)
    audio = torch.randn(4, 5, TINY_WAV2VEC["num_hidden_layers"], TINY_WAV2VEC["hidden_size"], generator=g)
    settings = GenerationSettings(steps=2, frames_per_clip=2, past_frames=2, init_past_frames=2)
    video = torch.cat([clip.decoded for clip in pipeline.generate(image, None, audio.to(dtype), settings=settings)])
    return [t for level in features.down + [features.mid] + features.up for t in level] + [latents, video]


def test_tuning_computes_the_same_networks_in_float64():
    """In float64 (oneDNN is not used there) the phase upsampling regroups sums only: equal to 1e-10."""
    models, vae = _tiny_nets(torch.float64)
    with torch.no_grad():
        untuned = _run_nets(models, vae, torch.float64)
        apply_cpu_tuning(models, vae)
        tuned = _run_nets(models, vae, torch.float64)
    for a, b in zip(untuned, tuned):
        torch.testing.assert_close(b, a, atol=1e-10, rtol=0)


def test_apply_is_idempotent_and_remove_restores_the_untuned_result_bit_for_bit():
    models, vae = _tiny_nets()
    keys = {name: list(net.state_dict()) for name, net in models.modules().items()}
    params = {name: [id(p) for p in net.parameters()] for name, net in models.modules().items()}
    vae_keys = list(vae.vae.state_dict())
    with torch.no_grad():
        untuned = _run_nets(models, vae)
        apply_cpu_tuning(models, vae)
        apply_cpu_tuning(models, vae)  # a second call changes nothing
        assert cpu_tuning_applied(models) and cpu_tuning_applied(vae) and cpu_tuning_applied(models.diffusion_net)
        assert not cpu_tuning_applied(models.image_proj)  # nothing in it is tuned
        tuned = _run_nets(models, vae)
        remove_cpu_tuning(models, vae)
        assert not cpu_tuning_applied(models) and not cpu_tuning_applied(vae)
        again = _run_nets(models, vae)
    assert {name: list(net.state_dict()) for name, net in models.modules().items()} == keys
    assert {name: [id(p) for p in net.parameters()] for name, net in models.modules().items()} == params
    assert list(vae.vae.state_dict()) == vae_keys
    for a, b, c in zip(untuned, tuned, again):
        assert torch.equal(a, c)
        torch.testing.assert_close(b, a, atol=1e-4, rtol=1e-4)


def test_pipeline_and_unknown_arguments():
    from memo_pipeline.pipeline import MemoPipeline

    models, vae = _tiny_nets()
    pipeline = MemoPipeline(models, vae)
    apply_cpu_tuning(pipeline)
    assert cpu_tuning_applied(models) and cpu_tuning_applied(vae)
    remove_cpu_tuning(pipeline)
    assert not cpu_tuning_applied(pipeline)
    with pytest.raises(TypeError, match="not str"):
        apply_cpu_tuning("diffusion_net")


def test_a_forward_replaced_by_someone_else_is_left_alone():
    up = randomize(Upsample2D(8, use_conv=True, out_channels=6), seed=3)
    own = lambda x, output_size=None: x  # noqa: E731
    up.forward = own
    apply_cpu_tuning(up)
    assert up.forward is own and not cpu_tuning_applied(up)
    remove_cpu_tuning(up)
    assert up.forward is own


needs_onednn = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="this PyTorch has no oneDNN")
ONEDNN_LINEAR = "mkldnn::_linear_pointwise"


@needs_onednn
def test_linear_layers_of_both_unets_run_on_onednn_only_when_tuned():
    models, _ = _tiny_nets()
    ref = models.reference_net
    x, face = torch.randn(2, 4, 8, 8), torch.randn(2, 4, ref.config.cross_attention_dim)
    run = lambda: ref(x, torch.zeros(()), face)  # noqa: E731
    assert ONEDNN_LINEAR not in _op_counts(run)
    apply_cpu_tuning(models)
    assert _op_counts(run).get(ONEDNN_LINEAR, 0) > 10
    with torch.backends.mkldnn.flags(enabled=False):  # a user who switched oneDNN off keeps PyTorch's kernel
        assert ONEDNN_LINEAR not in _op_counts(run)
    ref.double()  # other dtypes keep PyTorch's own kernel
    assert ONEDNN_LINEAR not in _op_counts(lambda: ref(x.double(), torch.zeros(()), face.double()))
    projection = models.audio_proj  # only the two UNets are routed
    window = torch.randn(1, 2, *projection_input_shape(models))
    with torch.no_grad():
        assert ONEDNN_LINEAR not in _op_counts(lambda: projection(window))
    remove_cpu_tuning(models)
    ref.float()
    assert ONEDNN_LINEAR not in _op_counts(run)


def projection_input_shape(models):
    config = models.audio_proj.config
    return (config.seq_len, config.blocks, config.channels)


@needs_onednn
def test_tuned_linear_layers_still_train():
    """The oneDNN op has no backward: with autograd the tuned layers use PyTorch's kernel."""
    models, _ = _tiny_nets()
    apply_cpu_tuning(models)
    layer = next(m for m in models.diffusion_net.modules() if isinstance(m, torch.nn.Linear))
    layer.requires_grad_(True)
    x = torch.randn(3, layer.in_features)
    assert ONEDNN_LINEAR not in _op_counts(lambda: layer(x).sum().backward())
    assert layer.weight.grad is not None
    with torch.no_grad():
        ops = _op_counts(lambda: layer(x))
    assert ops.get(ONEDNN_LINEAR) == 1
    torch.testing.assert_close(layer(x), torch.nn.functional.linear(x, layer.weight, layer.bias))


# ---- the heap ----------------------------------------------------------------------------------------

needs_glibc = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the heap settings are glibc's")


@needs_glibc
def test_tuned_allocator_writes_back_the_settings_it_found():
    outside = cpu_tuning.allocator_settings()
    with pytest.raises(RuntimeError):
        with tuned_allocator():
            assert cpu_tuning.allocator_settings() == cpu_tuning.TUNED_SETTINGS
            with tuned_allocator():  # nested: the enclosing block's settings come back
                assert cpu_tuning.allocator_settings() == cpu_tuning.TUNED_SETTINGS
            assert cpu_tuning.allocator_settings() == cpu_tuning.TUNED_SETTINGS
            raise RuntimeError("an interrupted run still restores the heap settings")
    found = cpu_tuning.allocator_settings()
    assert found != cpu_tuning.TUNED_SETTINGS
    if outside is not None:
        assert found == outside


def _run_heap_script(body: str, env: dict | None = None) -> dict:
    """Run `body` in a fresh interpreter with `heap()` (glibc's mallinfo2: mapped blocks) and
    `block(n)` / `free(p)` available; it prints one JSON object, returned here."""
    script = textwrap.dedent("""
        import ctypes, json, sys
        sys.path.insert(0, {root!r})
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc.restype = ctypes.c_void_p
        libc.malloc.argtypes = [ctypes.c_size_t]
        libc.free.argtypes = [ctypes.c_void_p]

        class Info(ctypes.Structure):
            _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                        "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

        libc.mallinfo2.restype = Info

        def heap():
            return libc.mallinfo2().hblks

        def mapped(size):
            before = heap()
            p = libc.malloc(size)
            ctypes.memset(p, 1, 64)
            result = heap() > before
            libc.free(p)
            return result
    """).format(root=str(REPO)) + textwrap.dedent(body)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


MIB = 1 << 20


@needs_glibc
def test_tuned_allocator_keeps_big_blocks_inside_and_glibc_rule_afterwards():
    """Observed through glibc itself: inside, even a 96 MiB block comes from the heap; afterwards
    blocks of 40 MiB are mapped and those of 24 MiB are not, as glibc's own adaptive rule does
    after large temporaries were freed; and a process that never entered it behaves the same."""
    result = _run_heap_script("""
        from memo_pipeline.cpu_tuning import tuned_allocator
        with tuned_allocator():
            inside = mapped(96 << 20)
        after = [mapped(96 << 20), mapped(40 << 20), mapped(24 << 20)]
        print(json.dumps({"inside": inside, "after": after}))
    """)
    plain = _run_heap_script("""
        p = libc.malloc((32 << 20) - 8192)  # glibc's rule: freeing a mapped block raises its thresholds
        libc.free(p)
        print(json.dumps({"after": [mapped(96 << 20), mapped(40 << 20), mapped(24 << 20)]}))
    """)
    assert result == {"inside": False, "after": [True, True, False]}
    assert plain["after"] == result["after"]


@needs_glibc
def test_tuned_allocator_restores_settings_fixed_by_the_environment():
    result = _run_heap_script("""
        from memo_pipeline import cpu_tuning
        with cpu_tuning.tuned_allocator():
            inside = mapped(96 << 20)
        print(json.dumps({"inside": inside, "after": mapped(1 << 20), "settings": cpu_tuning.allocator_settings()}))
    """, env={"MALLOC_MMAP_THRESHOLD_": str(512 * 1024), "MALLOC_TRIM_THRESHOLD_": str(3 * MIB)})
    assert result == {"inside": False, "after": True, "settings": {"mmap_max": 65536, "trim_threshold": 3 * MIB}}


@needs_glibc
def test_a_generation_leaves_the_heap_settings_alone():
    """The library never changes allocator settings: between the clips it yields, a 96 MiB block
    is still mapped on its own, as glibc does by default."""
    result = _run_heap_script("""
        import torch
        from diffusers import AutoencoderKL
        from memo_pipeline.pipeline import GenerationSettings, MemoPipeline, reference_pixels
        from memo_pipeline.tiny import TINY_VAE, TINY_WAV2VEC, randomize, tiny_memo_models
        from memo_pipeline.vae import DiffusersVAE
        pipeline = MemoPipeline(tiny_memo_models(), DiffusersVAE(randomize(AutoencoderKL(**TINY_VAE), seed=5)))
        image = reference_pixels(torch.rand(32, 32, 3))
        audio = torch.randn(4, 5, TINY_WAV2VEC["num_hidden_layers"], TINY_WAV2VEC["hidden_size"])
        settings = GenerationSettings(steps=1, frames_per_clip=2, past_frames=2, init_past_frames=2, guidance_scale=1.0)
        seen = [mapped(96 << 20) for clip in pipeline.generate(image, None, audio, settings=settings)]
        print(json.dumps({"between_clips": seen}))
    """)
    assert result == {"between_clips": [True, True]}


def test_the_networks_know_nothing_of_the_cpu_tuning():
    """`models/` is MEMO only: no import of the tuning or the heap, and no class swapped at run time."""
    import ast

    offenders = []
    for path in sorted((REPO / "memo_pipeline" / "models").glob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""] + [alias.name for alias in node.names]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            tuning = ("cpu_tuning", "heap", "cpu_kernels", "upsample")  # today's module and yesterday's
            if any(part in tuning for name in names for part in name.split(".")):
                offenders.append(f"{path.name}: imports {names}")
            if isinstance(node, ast.Attribute) and node.attr == "__class__" and isinstance(node.ctx, ast.Store):
                offenders.append(f"{path.name}:{node.lineno}: assigns __class__")
    assert offenders == []
