"""Weight storage dtype (`--weight-dtype`): which parameters are stored how, loading straight into
that dtype (and its peak memory), generations with stored weights, and the default left untouched."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from memo_pipeline.cli import make_test_portrait, make_test_tone
from memo_pipeline.cpu_tuning import apply_cpu_tuning, cpu_tuning_applied, remove_cpu_tuning
from memo_pipeline.layers import (KEPT_IN_COMPUTE_DTYPE, KEPT_NETWORKS, STORED_LAYER_CLASSES, WEIGHT_DTYPES, CastingLayer,
                                  CastingLayers, WeightDtypeError, network_weight_dtype, resolve_weight_dtype,
                                  storage_dtypes, to_storage_dtype, use_layers)
from memo_pipeline.loading import COMPONENTS, GENERATION_NETWORKS, CheckpointError, MemoModels, load_component
from memo_pipeline.pipeline import GenerationSettings, MemoPipeline, WindowedAudio, reference_pixels
from memo_pipeline.tiny import tiny_memo_models
from memo_pipeline.vae import DiffusersVAE
from memo_pipeline.video_io import read_video_info

ROOT = Path(__file__).resolve().parents[1]
STORED = [name for name, dtype in WEIGHT_DTYPES.items() if dtype is not None]


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float(((a.double() - b.double()) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(1.0 / mse)


def _owners(network: nn.Module) -> dict[str, nn.Module]:
    return {f"{prefix}.{name}" if prefix else name: module for prefix, module in network.named_modules()
            for name, _ in list(module.named_parameters(recurse=False)) + list(module.named_buffers(recurse=False))}


# ---------------------------------------------------------------- which parameter is stored how

@pytest.mark.parametrize("weight_dtype", list(WEIGHT_DTYPES))
@pytest.mark.parametrize("compute", [torch.float32, torch.bfloat16])
def test_storage_dtype_of_every_parameter(weight_dtype, compute):
    models = tiny_memo_models()
    stored = resolve_weight_dtype(weight_dtype)
    for net in GENERATION_NETWORKS:
        network = getattr(models, net)
        dtypes = storage_dtypes(network, stored, compute)
        owners = _owners(network)
        floating = {k for k, v in network.state_dict().items() if v.is_floating_point()}
        assert set(dtypes) == floating
        for name, dtype in dtypes.items():
            module = owners[name]
            kept = not isinstance(module, STORED_LAYER_CLASSES) or isinstance(module, KEPT_IN_COMPUTE_DTYPE) \
                or name.endswith(".bias") or name.split(".")[0] in ("conv_in", "conv_out")
            assert dtype == (compute if kept or stored is None else stored), (net, name)
        # the rule keeps the norms, biases, embedding tables, the motion module's position table, conv_in/out
        for name, module in owners.items():
            if name in dtypes and (isinstance(module, (nn.GroupNorm, nn.LayerNorm, nn.Embedding)) or "pos_encoder" in name
                                   or name.startswith(("conv_in.", "conv_out.")) or name.endswith(".bias")):
                assert dtypes[name] == compute, name
        assert any(v == (stored or compute) for v in dtypes.values())
    assert KEPT_NETWORKS == ("image_proj", "emotion_classifier")
    assert network_weight_dtype("image_proj", stored) is None and network_weight_dtype("diffusion_net", stored) is stored
    if stored is not None:  # nearly all bytes are stored small
        net = models.diffusion_net
        dtypes = storage_dtypes(net, stored, compute)
        small = sum(t.numel() for k, t in net.state_dict().items() if dtypes.get(k) == stored)
        assert small / sum(t.numel() for t in net.state_dict().values()) > 0.9


def test_weight_dtype_names():
    assert list(WEIGHT_DTYPES) == ["default", "bf16", "fp16", "fp8_e4m3fn", "fp8_e5m2"]
    assert resolve_weight_dtype("default") is None and resolve_weight_dtype(None) is None
    assert resolve_weight_dtype("fp8_e4m3fn") is torch.float8_e4m3fn
    with pytest.raises(WeightDtypeError, match="unknown weight dtype 'fp4'"):
        resolve_weight_dtype("fp4")


@pytest.mark.parametrize("dtype", [torch.float8_e4m3fn, torch.float8_e5m2])
def test_fp8_storage_clamps_to_the_format_instead_of_overflowing(dtype):
    limit = torch.finfo(dtype).max
    values = torch.tensor([1e6, -1e6, limit * 1.5, 1.0, -0.5, 0.0])
    # (a plain cast gives NaN or inf on some devices and torch versions; the clamp never does)
    stored = to_storage_dtype(values, dtype)
    assert stored.dtype == dtype
    assert stored.float().tolist() == [limit, -limit, limit, 1.0, -0.5, 0.0]
    same = torch.ones(3, dtype=torch.bfloat16)
    assert to_storage_dtype(same, torch.bfloat16) is same


# ---------------------------------------------------------------- loading


@pytest.mark.parametrize("weight_dtype", STORED)
def test_loading_stores_each_parameter_in_its_dtype(tiny_bundle, weight_dtype):
    plain = MemoModels.load(tiny_bundle["memo"])
    models = MemoModels.load(tiny_bundle["memo"], weight_dtype=weight_dtype)
    stored = WEIGHT_DTYPES[weight_dtype]
    assert models.dtype == models.compute_dtype == torch.float32 and models.weight_dtype == stored
    for net in ("reference_net", "diffusion_net", "audio_proj"):
        network, reference = getattr(models, net), getattr(plain, net).state_dict()
        wanted = storage_dtypes(network, stored, torch.float32)
        for name, tensor in network.state_dict().items():
            assert tensor.dtype == wanted.get(name, reference[name].dtype), (net, name)
            assert torch.equal(tensor, to_storage_dtype(reference[name], tensor.dtype)), (net, name)
        assert all(isinstance(m, CastingLayer) for m in network.modules() if isinstance(m, STORED_LAYER_CLASSES))
    # the image projection and the emotion classifier (which labels audio in fp32) keep their weights as loaded
    for net in KEPT_NETWORKS:
        network, reference = getattr(models, net), getattr(plain, net).state_dict()
        assert all(torch.equal(t, reference[k]) and t.dtype == torch.float32 for k, t in network.state_dict().items())
        assert not any(isinstance(m, CastingLayer) for m in network.modules())


def test_bf16_compute_with_fp8_weights_and_moving_keeps_the_storage(tiny_bundle):
    models = MemoModels.load(tiny_bundle["memo"], dtype="bf16", weight_dtype="fp8_e4m3fn")
    assert models.dtype == torch.bfloat16
    conv_in, norm = models.diffusion_net.conv_in, models.diffusion_net.conv_norm_out
    conv = models.diffusion_net.down_blocks[0].resnets[0].conv1
    assert conv.weight.dtype == torch.float8_e4m3fn and conv.bias.dtype == torch.bfloat16
    assert conv_in.weight.dtype == norm.weight.dtype == models.image_proj.proj.weight.dtype == torch.bfloat16
    models.to(dtype="fp32")
    assert models.dtype == torch.float32
    assert conv.weight.dtype == torch.float8_e4m3fn and conv.bias.dtype == torch.float32
    assert conv_in.weight.dtype == norm.weight.dtype == models.image_proj.proj.weight.dtype == torch.float32


def _write_image_proj(tmp_path, edit=None):
    from safetensors.torch import load_file, save_file

    from memo_pipeline.tiny import write_tiny_memo

    root = write_tiny_memo(tmp_path / "memo", seed=1)
    folder = root / "image_proj"
    if edit is not None:
        path = folder / "diffusion_pytorch_model.safetensors"
        tensors = load_file(str(path))
        edit(tensors)
        save_file(tensors, str(path))
    return folder


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda t: t.pop("norm.bias"), r"1 missing keys: norm\.bias"),
        (lambda t: t.__setitem__("extra.weight", torch.zeros(1)), r"1 unexpected keys: extra\.weight"),
        (lambda t: t.__setitem__("proj.bias", torch.zeros(7)), r"shape mismatches: proj\.bias \(7,\) \(model wants \(96,\)\)"),
    ],
)
def test_strict_key_and_shape_errors_come_from_the_headers_before_any_tensor_is_read(tmp_path, monkeypatch, edit, message):
    folder = _write_image_proj(tmp_path, edit)
    cls = COMPONENTS["image_proj"][1]
    with pytest.raises(CheckpointError, match=message):
        load_component(folder, cls)  # the default path says the same
    import memo_pipeline.loading as loading

    def no_reads(*args, **kwargs):
        raise AssertionError("a tensor was read before the keys and shapes were checked")
    monkeypatch.setattr(loading, "_read_tensor", no_reads)
    for weight_dtype in ("bf16", "fp8_e4m3fn"):
        with pytest.raises(CheckpointError, match=message) as err:
            load_component(folder, cls, weight_dtype=weight_dtype)
        assert "diffusion_pytorch_model.safetensors" in str(err.value)


def test_truncated_file_is_a_checkpoint_error(tmp_path):
    folder = _write_image_proj(tmp_path)
    path = folder / "diffusion_pytorch_model.safetensors"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_component(folder, COMPONENTS["image_proj"][1], weight_dtype="bf16")


def test_default_weight_dtype_is_the_old_path(tiny_bundle):
    old = MemoModels.load(tiny_bundle["memo"])
    for same in (MemoModels.load(tiny_bundle["memo"], weight_dtype="default"),
                 MemoModels.load(tiny_bundle["memo"], weight_dtype=None)):
        assert same.weight_dtype is None
        for name, network in old.modules().items():
            other = getattr(same, name)
            assert [type(m) for m in network.modules()] == [type(m) for m in other.modules()]
            assert not any(isinstance(m, CastingLayer) for m in other.modules())
            theirs = other.state_dict()
            assert all(torch.equal(v, theirs[k]) and v.dtype == theirs[k].dtype for k, v in network.state_dict().items())


# ---------------------------------------------------------------- generations

FAST = dict(steps=2, frames_per_clip=4, past_frames=4, init_past_frames=4, seed=7)
# PSNR of the tiny random-weight video (8 frames, 64 px, 2 steps) against fp32 weights, as measured
# (bf16 53.0, fp16 70.3, fp8_e4m3fn 28.7, fp8_e5m2 24.3 dB), each bound a few dB below.
TINY_PSNR_FLOOR = {"bf16": 48.0, "fp16": 64.0, "fp8_e4m3fn": 25.0, "fp8_e5m2": 21.0}


@pytest.fixture(scope="module")
def tiny_vae(tiny_bundle):
    return DiffusersVAE.from_pretrained(tiny_bundle["vae"], batch_size=8)


def _video(models, vae):
    g = torch.Generator().manual_seed(0)
    image = reference_pixels(torch.rand(64, 64, 3, generator=g))
    face = torch.randn(1, 512, generator=g)
    audio = WindowedAudio(torch.randn(8, 5, 2, 16, generator=g), num_frames=8)
    with torch.no_grad():
        return torch.cat([c.frames for c in MemoPipeline(models, vae).generate(image, face, audio, 3, GenerationSettings(**FAST))])


@pytest.fixture(scope="module")
def fp32_video(tiny_bundle, tiny_vae):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as every test here (conftest): a module fixture is made before that setting
    try:
        return _video(MemoModels.load(tiny_bundle["memo"]), tiny_vae)
    finally:
        torch.set_num_threads(threads)


def test_default_generation_is_bit_identical(tiny_bundle, tiny_vae, fp32_video):
    assert torch.equal(_video(MemoModels.load(tiny_bundle["memo"], weight_dtype="default"), tiny_vae), fp32_video)


@pytest.mark.parametrize("weight_dtype", STORED)
def test_generation_with_stored_weights_stays_close_to_fp32(tiny_bundle, tiny_vae, fp32_video, weight_dtype):
    video = _video(MemoModels.load(tiny_bundle["memo"], weight_dtype=weight_dtype), tiny_vae)
    assert video.shape == fp32_video.shape and torch.isfinite(video).all()
    assert not torch.equal(video, fp32_video)  # the storage really changed
    assert _psnr(video, fp32_video) >= TINY_PSNR_FLOOR[weight_dtype]


def test_cpu_tuning_on_casting_layers_equals_untuned(tiny_bundle, tiny_vae):
    models = MemoModels.load(tiny_bundle["memo"], weight_dtype="bf16")
    untuned = _video(models, tiny_vae)
    apply_cpu_tuning(models)
    assert cpu_tuning_applied(models.diffusion_net)
    tuned = _video(models, tiny_vae)
    remove_cpu_tuning(models)
    again = _video(models, tiny_vae)
    assert torch.equal(again, untuned)
    torch.testing.assert_close(tuned, untuned, atol=1e-4, rtol=1e-4)
    # the tuned linear layers read the bf16 weights cast to fp32, not the raw storage
    assert models.diffusion_net.time_embedding.linear_1.weight.dtype == torch.bfloat16


def test_use_layers_swaps_classes_in_place_and_refuses_foreign_ones():
    net = nn.Sequential(nn.Linear(4, 4), nn.GroupNorm(2, 4), nn.Conv2d(4, 4, 1))
    params = [id(p) for p in net.parameters()]
    use_layers(net, CastingLayers)
    assert [type(m) for m in net] == [CastingLayers.Linear, CastingLayers.GroupNorm, CastingLayers.Conv2d]
    assert [id(p) for p in net.parameters()] == params
    use_layers(net, CastingLayers)  # twice: unchanged

    class Wrong:
        Linear = nn.Conv2d
    with pytest.raises(TypeError, match="does not subclass"):
        use_layers(nn.Sequential(nn.Linear(2, 2)), Wrong)


def test_generate_command_with_fp8_weights(tiny_bundle, tmp_path):
    image = make_test_portrait(tmp_path / "portrait.png", 128)
    audio = make_test_tone(tmp_path / "tone.wav", 0.3)
    out = tmp_path / "fp8.mp4"
    command = [sys.executable, "-m", "memo_pipeline", "generate", "--checkpoint", str(tiny_bundle["memo"]),
               "--vae", str(tiny_bundle["vae"]), "--wav2vec", str(tiny_bundle["wav2vec2"]), "--image", str(image),
               "--audio", str(audio), "--out", str(out), "--steps", "1", "--no-progress", "--allow-no-face",
               "--resolution", "64", "--weight-dtype", "fp8_e4m3fn"]
    done = subprocess.run(command, capture_output=True, text=True, cwd=str(ROOT), timeout=300,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert done.returncode == 0, done.stderr[-2000:]
    assert read_video_info(out)["frames"] == 9
    bad = subprocess.run(command[:-1] + ["fp4"], capture_output=True, text=True, cwd=str(ROOT), timeout=120,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert bad.returncode == 2 and "--weight-dtype" in bad.stderr and "Traceback" not in bad.stderr


# ---------------------------------------------------------------- loading peak memory

LOAD_PEAK_CHILD = textwrap.dedent("""
    import json, sys
    import torch
    from memo_pipeline.loading import COMPONENTS, load_component

    folder, weight_dtype = sys.argv[1], sys.argv[2]

    def status(field):
        for line in open("/proc/self/status"):
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024

    load_component(sys.argv[3], COMPONENTS["image_proj"][1], weight_dtype=weight_dtype)  # the code paths, warm
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # VmHWM := the current RSS
    before = status("VmRSS")
    model = load_component(folder, COMPONENTS["diffusion_net"][1], weight_dtype=weight_dtype)
    peak = status("VmHWM")
    stored = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    print(json.dumps({"before": before, "peak": peak, "stored": stored}))
""")


@pytest.fixture(scope="module")
def wide_diffusion_net(tmp_path_factory):
    """A diffusion net of 384-wide levels (about 340 MB in fp32, 660 tensors) written as safetensors:
    big enough that its weights dominate the loading process's memory."""
    from memo_pipeline.loading import build_model, save_component
    from memo_pipeline.tiny import TINY_CONFIGS, randomize, write_tiny_memo

    config = dict(TINY_CONFIGS["diffusion_net"], block_out_channels=[192, 384, 384], norm_num_groups=32,
                  attention_head_dim=32, down_block_types=["CrossAttnDownBlock3D"] * 2 + ["DownBlock3D"],
                  up_block_types=["UpBlock3D"] + ["CrossAttnUpBlock3D"] * 2)
    folder = tmp_path_factory.mktemp("wide")
    net = randomize(build_model(COMPONENTS["diffusion_net"][1], config, "wide diffusion_net"), seed=5)
    save_component(net, folder / "diffusion_net", COMPONENTS["diffusion_net"][2])
    largest = max(t.numel() * 4 for t in net.state_dict().values())
    total = sum(t.numel() * 4 for t in net.state_dict().values())
    del net
    return folder / "diffusion_net", write_tiny_memo(folder / "tiny") / "image_proj", largest, total


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc to reset the RSS peak")
@pytest.mark.parametrize("weight_dtype", ["fp8_e4m3fn", "bf16"])
def test_loading_peak_memory_is_the_stored_size(wide_diffusion_net, weight_dtype):
    """Peak RSS while loading <= 1.1 x the stored size + the largest tensor in the file's dtype
    (the one read before its cast) + 8 MiB (allocator and Python objects); a load that went through
    a whole fp32 copy would need about the fp32 size (4x / 2x the stored size)."""
    folder, warm, largest, fp32_bytes = wide_diffusion_net
    done = subprocess.run([sys.executable, "-c", LOAD_PEAK_CHILD, str(folder), weight_dtype, str(warm)],
                          capture_output=True, text=True, timeout=300, cwd=str(ROOT), env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert done.returncode == 0, done.stderr[-2000:]
    measured = json.loads(done.stdout.strip().splitlines()[-1])
    rise = measured["peak"] - measured["before"]
    print(f"{weight_dtype}: loading raised RSS by {rise / 2**20:.1f} MiB for {measured['stored'] / 2**20:.1f} MiB stored "
          f"({fp32_bytes / 2**20:.1f} MiB in fp32; largest tensor {largest / 2**20:.1f} MiB)")
    assert measured["stored"] < fp32_bytes / 1.9
    assert rise <= 1.1 * measured["stored"] + largest + (8 << 20), (rise, measured, largest)


# ---------------------------------------------------------------- saved states and batches


def _first_clip_state(models, vae, tmp_path):
    g = torch.Generator().manual_seed(0)
    audio = WindowedAudio(torch.randn(12, 5, 2, 16, generator=g))
    settings = GenerationSettings(steps=1, frames_per_clip=4, past_frames=4, init_past_frames=4, seed=3)
    stream = MemoPipeline(models, vae).generate(reference_pixels(torch.rand(64, 64, 3, generator=g)), None, audio, 3,
                                                settings)
    clip = next(stream)
    stream.close()
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "state.safetensors"
    clip.state.save(path)
    return path, settings


def test_a_state_continues_only_with_the_weight_dtype_that_made_it(tiny_bundle, tiny_vae, tmp_path):
    from safetensors.torch import load_file, save_file

    from memo_pipeline.state import GenerationState, StateError

    fp8 = MemoModels.load(tiny_bundle["memo"], weight_dtype="fp8_e4m3fn")
    plain = MemoModels.load(tiny_bundle["memo"])
    path, settings = _first_clip_state(fp8, tiny_vae, tmp_path)
    state = GenerationState.load(path)
    assert state.metadata["weight_dtype"] == "fp8_e4m3fn"
    state.check_compatible(fp8, settings, 3, 64, 12)
    with pytest.raises(StateError, match="made with weight_dtype fp8_e4m3fn, this run asks for default"):
        state.check_compatible(plain, settings, 3, 64, 12)
    # a state saved before weight dtypes existed was made with default weights
    plain_path, _ = _first_clip_state(plain, tiny_vae, tmp_path / "plain")
    metadata = GenerationState.read_metadata(plain_path)
    assert metadata.pop("weight_dtype") == "default"
    older = tmp_path / "older.safetensors"
    save_file(load_file(str(plain_path)), str(older), metadata=metadata)
    GenerationState.load(older).check_compatible(plain, settings, 3, 64, 12)
    with pytest.raises(StateError, match="made with weight_dtype default, this run asks for fp8_e4m3fn"):
        GenerationState.load(older).check_compatible(fp8, settings, 3, 64, 12)


def test_batch_rows_choose_their_weight_dtype(tiny_bundle, tmp_path, capsys):
    sys.path.insert(0, str(Path(__file__).parent))
    from batch_support import decode, make_inputs, run_batch, write_csv

    inputs = make_inputs(tmp_path / "in", {"a": 0.3})
    rows = [{"image": inputs["portrait"], "audio": inputs["a"], "out": name + ".mp4", "weight_dtype": dtype}
            for name, dtype in (("plain", "default"), ("fp8", "fp8_e4m3fn"), ("cli", ""))]
    bad = write_csv(tmp_path / "bad.csv", rows + [{"image": inputs["portrait"], "audio": inputs["a"], "out": "x.mp4",
                                                    "weight_dtype": "fp4"}])
    code, _ = run_batch(tiny_bundle, bad, tmp_path / "bad-out")
    err = capsys.readouterr().err
    assert code == 2 and "line 5: weight_dtype 'fp4' is not one of default, bf16" in err
    # a blank cell takes the command line's value (bf16 here)
    rows[2].pop("weight_dtype")
    manifest = write_csv(tmp_path / "jobs.csv", rows)
    out = tmp_path / "out"
    code, report = run_batch(tiny_bundle, manifest, out, "--weight-dtype", "bf16")
    assert code == 0 and [r["status"] for r in report["rows"]] == ["done"] * 3
    plain, fp8, cli = (decode(out / f"{name}.mp4")[0].astype(int) for name in ("plain", "fp8", "cli"))
    assert plain.shape == fp8.shape == cli.shape
    assert np.abs(plain - fp8).max() > np.abs(plain - cli).max() > 0  # each row ran with its own storage


def test_bench_cache_holds_the_in_memory_random_weights(tmp_path, monkeypatch):
    """bench/configs.py writes its random networks tensor by tensor for `build_case(weight_dtype=...)`:
    the very values its in-memory path draws, loaded through the real path."""
    sys.path.insert(0, str(ROOT / "bench"))
    import configs

    monkeypatch.setattr(configs, "WEIGHT_CACHE", tmp_path)
    in_memory = configs.build_case("tiny", 64, 1, frames_per_clip=4, cpu_tuning=False)
    loaded = configs.build_case("tiny", 64, 1, frames_per_clip=4, cpu_tuning=False, weight_dtype="fp8_e4m3fn")
    assert len(list(tmp_path.iterdir())) == 1  # one checkpoint folder, no partial one left
    assert loaded.pipeline.models.weight_dtype == torch.float8_e4m3fn
    for net in GENERATION_NETWORKS:
        ours, theirs = getattr(in_memory.pipeline.models, net), getattr(loaded.pipeline.models, net).state_dict()
        for name, tensor in ours.state_dict().items():
            assert torch.equal(to_storage_dtype(tensor, theirs[name].dtype), theirs[name]), (net, name)
    assert torch.equal(in_memory.pixels, loaded.pixels) and torch.equal(in_memory.emotion, loaded.emotion)
