"""The memory plan (memo_pipeline.memory_plan) against the memory a real CPU run allocates.

The measurement is the CPU allocator's own running total of bytes in use, as torch.profiler
records it with `profile_memory=True` (every allocation and free, kernels' scratch included),
taken over the same phases of a real run with random weights, plus the bytes of the weights
allocated before the profile started. The plan never runs a kernel: it counts FakeTensor
storages, so the two share only the pipeline code that decides what is computed.
"""

from __future__ import annotations

import pytest
import torch

from memo_pipeline.memory_plan import PlanRequest, clip_phases, plan_memory

TOLERANCE = 0.10


def _walk(nodes):
    for node in nodes:
        yield node
        yield from _walk(node.children)


def weight_bytes(*modules) -> int:
    """Bytes of the distinct storages of the modules' parameters and buffers (by address)."""
    storages = {}
    for module in modules:
        for tensor in [*module.parameters(), *module.buffers()]:
            storage = tensor.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
    return sum(storages.values())


def measured_phase_peaks(run, baseline: int, mapped=lambda: []) -> dict[str, int]:
    """Peak bytes the CPU allocator had in use during each `memo_phase::NAME` block of `run()`,
    plus `baseline` (bytes allocated before the profile started) and the storages of `mapped()`
    (tensors after the run) that the allocator never made: safetensors maps checkpoint files into
    memory, and weights loaded without a cast keep that mapping (they count in RSS once read)."""
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    with torch.no_grad(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        run()
    nodes = list(_walk(prof.profiler.kineto_results.experimental_event_tree()))
    allocations = sorted((n for n in nodes if n.tag == _EventType.Allocation), key=lambda n: n.start_time_ns)
    made = [(n.extra_fields.ptr, n.extra_fields.ptr + n.extra_fields.alloc_size) for n in allocations
            if n.extra_fields.alloc_size > 0]
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in mapped()}
    baseline += sum(size for ptr, size in storages.items() if not any(low <= ptr < high for low, high in made))
    totals, live, total = [], {}, 0
    for n in allocations:  # bytes allocated inside the profile and not yet freed (earlier blocks' frees ignored)
        ptr, size = n.extra_fields.ptr, n.extra_fields.alloc_size
        if size > 0:
            total += size - live.get(ptr, 0)
            live[ptr] = size
        elif ptr in live:
            total -= live.pop(ptr)
        totals.append((n.start_time_ns, total))
    peaks = {}
    for node in nodes:
        if node.name.startswith("memo_phase::"):
            start, end = node.start_time_ns, node.end_time_ns
            before = [total for time, total in totals if time < start]
            inside = [total for time, total in totals if start <= time <= end]
            peaks[node.name.split("::")[1]] = baseline + max([before[-1] if before else 0, *inside])
    return peaks


def phase(name: str):
    from torch.profiler import record_function

    return record_function(f"memo_phase::{name}")


def real_run(size: str, resolution: int, dtype: str, weight_dtype: str, folder) -> tuple[dict[str, int], object]:
    """Measured phase peaks of a real CPU run: the MEMO networks loaded from a checkpoint written
    into `folder` (by `MemoModels.load`, the loading phase), then `clip_phases` with the case's VAE."""
    from bench.configs import build_case, settings_for
    from memo_pipeline.cpu_tuning import apply_cpu_tuning
    from memo_pipeline.loading import MemoModels, move, resolve_dtype
    from memo_pipeline.pipeline import MemoPipeline

    case = build_case(size, resolution, clips=2, cpu_tuning=False)
    case.pipeline.models.save(folder)
    vae = case.pipeline.vae
    move(vae.vae, dtype=resolve_dtype(dtype))
    del case
    settings = settings_for(steps=1)
    loaded = {}

    def run():
        with phase("loading"):
            loaded["models"] = MemoModels.load(folder, dtype=dtype, device="cpu", weight_dtype=weight_dtype)
        pipeline = MemoPipeline(loaded["models"], vae)
        apply_cpu_tuning(pipeline)  # as the command line runs on a CPU
        clip_phases(pipeline, settings, resolution, phase)

    def loaded_weights():
        return [t for network in loaded["models"].modules().values() for t in [*network.parameters(), *network.buffers()]]

    return measured_phase_peaks(run, weight_bytes(vae.vae), loaded_weights), settings


def in_memory_run(size: str, resolution: int, dtype: str, weight_dtype: str) -> tuple[dict[str, int], object]:
    """Measured phase peaks of a real CPU run whose random networks are put into their storage
    dtypes in memory, as the loader stores them (for networks too large to write out in a test)."""
    from bench.configs import build_case, settings_for
    from memo_pipeline.layers import CastingLayers, resolve_weight_dtype, storage_dtypes, to_storage_dtype, use_layers
    from memo_pipeline.loading import GENERATION_NETWORKS, resolve_dtype

    compute, stored = resolve_dtype(dtype), resolve_weight_dtype(weight_dtype)
    case = build_case(size, resolution, clips=2, dtype=compute)
    models = case.pipeline.models
    if stored is not None:
        for name in GENERATION_NETWORKS:
            network = getattr(models, name)
            use_layers(network, CastingLayers)
            targets = storage_dtypes(network, stored, compute)
            for key, tensor in [*network.named_parameters(), *network.named_buffers()]:
                if key in targets:
                    tensor.data = to_storage_dtype(tensor.data, targets[key])
        models.compute_dtype, models.weight_dtype = compute, stored
    pipeline, settings = case.pipeline, settings_for(steps=1)
    del case
    baseline = weight_bytes(*pipeline.models.modules().values(), pipeline.vae.vae)
    return measured_phase_peaks(lambda: clip_phases(pipeline, settings, resolution, phase), baseline), settings


def check_accuracy(size: str, resolution: int, dtype: str, weight_dtype: str, folder=None) -> dict[str, tuple[int, int]]:
    """Plan vs measurement per phase (loading only where the checkpoint is written and loaded)."""
    from bench.configs import _networks

    if folder is not None:
        measured, settings = real_run(size, resolution, dtype, weight_dtype, folder)
    else:
        measured, settings = in_memory_run(size, resolution, dtype, weight_dtype)
    configs, vae = _networks(size)
    plan = plan_memory(PlanRequest(resolution=resolution, frames_per_clip=settings.frames_per_clip,
                                   past_frames=settings.past_frames, cfg=settings.guidance_scale, dtype=dtype,
                                   weight_dtype=weight_dtype, device="cpu", configs=configs, vae_config=vae,
                                   audio_encoder=False))
    estimated = {p.name: p.device_bytes for p in plan.phases}
    result = {name: (estimated[name], measured[name]) for name in measured}
    print(size, dtype, weight_dtype, {name: f"{est / 1e6:.1f}/{real / 1e6:.1f} MB ({est / real - 1:+.1%})"
                                      for name, (est, real) in result.items()})
    for name, (est, real) in result.items():
        assert abs(est - real) <= TOLERANCE * real, f"{size} {dtype} {weight_dtype} {name}: plan {est} B, measured {real} B"
    return result


WEIGHT_DTYPES = ["default", "bf16", "fp16", "fp8_e4m3fn", "fp8_e5m2"]


@pytest.mark.parametrize("weight_dtype", WEIGHT_DTYPES)
@pytest.mark.parametrize("size", ["tiny", "small"])
def test_plan_is_within_ten_percent_of_a_real_cpu_run(size, weight_dtype, tmp_path):
    """Every phase, loading from a checkpoint included, at 64 px in float32 compute."""
    check_accuracy(size, 64, "fp32", weight_dtype, tmp_path / "memo")


@pytest.mark.slow
@pytest.mark.parametrize("weight_dtype", WEIGHT_DTYPES)
def test_plan_is_within_ten_percent_of_a_real_cpu_run_of_the_released_networks(weight_dtype):
    """The mid networks (released configs, ~10 GB in float32): one reference pass, one denoising
    step, one 16-frame decode at 64 px (the phases after loading)."""
    check_accuracy("mid", 64, "fp32", weight_dtype)


# ----------------------------------------------------------------------------- the check before a run

from memo_pipeline.memory_plan import DoesNotFit, check_fit, check_request_fits  # noqa: E402


def _tiny_request(**changes) -> PlanRequest:
    from bench.configs import _networks

    configs, vae = _networks("tiny")
    return PlanRequest(resolution=64, configs=configs, vae_config=vae, audio_encoder=False, **changes)


def test_check_names_the_smallest_change_that_fits_on_a_gpu():
    request = _tiny_request(device="cuda", dtype="bf16")
    plan = check_fit(request, free_device=10**12).plan
    peak = plan.peak_device_bytes
    by_phase = {p.name: p for p in plan.phases}
    model = check_fit(request.replace(offload="model"), free_device=10**12).plan
    assert model.peak_device_bytes < peak  # only the running network on the device
    assert model.phases[0].device_bytes == 0 and model.phases[0].host_bytes >= sum(plan.weight_bytes.values())
    assert by_phase["denoise"].activation_bytes > 0

    fits = check_fit(request, free_device=2 * peak)
    assert fits.verdict == "fits"
    close = check_fit(request, free_device=int(peak / 0.9))
    assert close.verdict == "close"
    # a little short: a lighter weight dtype or model offload fits; the message says both, mildest first
    short = check_fit(request, free_device=peak - 1)
    assert short.verdict == "too big"
    assert short.message.startswith(f"needs ~{plan_gb(peak)}, {plan_gb(peak - 1)} free: ")
    options = short.suggestion.split(" or ")
    for option in options:
        name, value = option.split(" ")
        assert check_fit(request.replace(**{name: value}), free_device=10**12).plan.peak_device_bytes <= peak - 1
    assert "offload model" in options and "offload sequential" not in options
    with pytest.raises(DoesNotFit, match="not enough device memory for this run: needs ~"):
        check_request_fits(request, free_device=peak - 1)
    # nothing fits in a byte
    assert check_fit(request, free_device=1).message.endswith("no smaller setting fits")


def test_offload_keeps_the_motion_memory_on_the_host_and_one_slot_on_the_device():
    """With an offload mode the memory waits on the host (`MemoModels.motion_memory_home`): the plan
    moves it from the device's phases to the host's, and the denoising step brings one slot back."""
    request = _tiny_request(device="cuda", dtype="bf16")
    plain = plan_memory(request)
    for mode in ("model", "sequential"):
        offload = plan_memory(request.replace(offload=mode))
        memory = offload.motion_memory_bytes
        assert memory == plain.motion_memory_bytes > 0
        slot = max(kv + z for kv, z in _slot_sizes(request))
        assert 0 < slot < memory
        kept, moved = ({p.name: p for p in plan.phases} for plan in (plain, offload))
        for name in ("reference", "denoise", "decode"):
            back = slot if name == "denoise" else 0
            assert moved[name].activation_bytes == kept[name].activation_bytes - memory + back, (mode, name)
            assert moved[name].host_bytes - memory == moved["reference"].host_bytes - memory  # weights and frames
        assert moved["reference"].host_bytes >= sum(offload.weight_bytes.values()) + memory
        assert any("motion memory waits on the host" in note for note in offload.notes)
    assert not any("motion memory waits on the host" in note for note in plain.notes)
    # what the nodes plan: ComfyUI loads one network at a time ("model") and the memory stays on the device
    kept_on_device = plan_memory(request.replace(offload="model", memory_on_host=False))
    assert kept_on_device.peak_device_bytes > plan_memory(request.replace(offload="model")).peak_device_bytes


def test_a_managed_run_keeps_the_motion_memory_in_ram_when_only_that_fits(caplog):
    """ComfyUI's check: one network at a time with the memory on the device; where that does not fit
    but the memory in RAM does, the run goes on so (the node then keeps it there), with a warning."""
    from memo_pipeline.memory_plan import check_managed_run

    request = _tiny_request(device="cuda", dtype="bf16", offload="model", memory_on_host=False)
    on_device = plan_memory(request).peak_device_bytes
    in_ram = plan_memory(request.replace(memory_on_host=True)).peak_device_bytes
    assert in_ram < on_device
    assert check_managed_run(request, 2 * on_device).plan.request.memory_on_host is False
    with caplog.at_level("WARNING", logger="memo_pipeline"):
        fit = check_managed_run(request, (in_ram + on_device) // 2)
    assert fit.plan.request.memory_on_host is True and fit.plan.request.offload == "model"
    assert "the motion memory will wait in RAM" in caplog.text
    with pytest.raises(DoesNotFit, match="not enough device memory"):
        check_managed_run(request, 1000)


def _slot_sizes(request):
    """(KV, Z) bytes of every memory slot, from the tiny diffusion net's temporal layers at the
    request's resolution: rows = CFG copies x tokens x heads."""
    from memo_pipeline.loading import COMPONENTS, build_model
    from memo_pipeline.state import memory_layers

    net = build_model(COMPONENTS["diffusion_net"][1], request.configs["diffusion_net"], "diffusion_net", device="meta")
    copies, latent = 2 if request.cfg > 1 else 1, request.resolution // 8
    sizes = []
    deepest = len(net.down_blocks) - 1
    for name, (heads, head_dim) in memory_layers(net).items():
        where, _, rest = name.partition(".")
        index = int(rest.split(".")[0]) if where != "mid_block" else deepest
        level = deepest - index if where == "up_blocks" else index  # mid_block: the deepest level
        tokens = (latent // 2**level) ** 2
        rows = copies * tokens * heads
        sizes.append((rows * head_dim * head_dim * 4, rows * head_dim * 4))
    return sizes


def plan_gb(nbytes):
    from memo_pipeline.memory_plan import gb

    return gb(nbytes)


def test_a_budget_caps_the_free_memory_and_a_close_fit_warns(caplog):
    request = _tiny_request(device="cpu")
    peak = check_fit(request, free_device=10**12).plan.peak_device_bytes
    with caplog.at_level("WARNING", logger="memo_pipeline"):
        fit = check_request_fits(request, budget_gb=peak / 0.9 / 1e9)
    assert fit.verdict == "close" and "memory is tight" in caplog.text
    with pytest.raises(DoesNotFit, match="not enough host memory"):
        check_request_fits(request, budget_gb=peak / 2 / 1e9)
    with pytest.raises(ValueError, match="--memory-budget must be a positive"):
        check_request_fits(request, budget_gb=0)


def test_plan_command_prints_the_table_and_json(tiny_bundle, capsys):
    import json

    from memo_pipeline.cli import main

    common = ["plan", "--checkpoint", str(tiny_bundle["memo"]), "--vae", str(tiny_bundle["vae"]),
              "--wav2vec", str(tiny_bundle["wav2vec2"]), "--resolution", "64", "--device", "cpu"]
    assert main(common + ["--json", "--weight-dtype", "fp8_e4m3fn"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["settings"]["weight_dtype"] == "fp8_e4m3fn" and out["settings"]["resolution"] == 64
    assert set(out["phases"]) == {"loading", "reference", "denoise", "decode"}
    assert out["peak_device_bytes"] == max(p["device_bytes"] for p in out["phases"].values())
    assert out["peak_host_bytes"] > 0 and out["free_bytes"] > 0 and out["fits"] in ("fits", "close", "too big")
    assert main(common) == 0
    table = capsys.readouterr().out
    assert "phase" in table and "denoise" in table and "peak" in table and "free now:" in table
    assert main(common + ["--resolution", "100"]) == 2
    assert "multiple of 8" in capsys.readouterr().err


def test_generate_over_its_memory_budget_stops_before_reading_any_weight(tiny_bundle, tmp_path, capsys, monkeypatch):
    """A budget smaller than the plan: exit 2 with the one-line reason and the change that fits, and
    no safetensors tensor was read (every weight reader of the loaders is replaced by a trap)."""
    from memo_pipeline import cli, loading, vae
    from memo_pipeline.audio import features

    def trap(*args, **kwargs):
        raise AssertionError("weights were read")

    for owner, name in ((loading, "load_file"), (loading, "read_weights"),
                        (loading, "stream_weights"), (vae, "load_vae_folder"), (vae, "load_single_file_vae"),
                        (features, "load_wav2vec2")):
        monkeypatch.setattr(owner, name, trap)
    image = cli.make_test_portrait(tmp_path / "portrait.png", 64)
    audio = cli.make_test_tone(tmp_path / "tone.wav", 0.3)
    args = ["generate", "--checkpoint", str(tiny_bundle["memo"]), "--vae", str(tiny_bundle["vae"]),
            "--wav2vec", str(tiny_bundle["wav2vec2"]), "--image", str(image), "--audio", str(audio),
            "--out", str(tmp_path / "out.mp4"), "--resolution", "64", "--steps", "1", "--device", "cpu",
            "--allow-no-face", "--no-progress", "--no-vocal-separation"]
    from memo_pipeline.plan_cli import job_request

    job = cli.Job(tiny_bundle["memo"], tiny_bundle["vae"], tiny_bundle["wav2vec2"], image, audio, tmp_path / "out.mp4",
                  cli.GenerationSettings(steps=1), resolution=64, device="cpu")
    peaks = [plan_memory(job_request(job).replace(weight_dtype=w)).peak_device_bytes for w in ("default", "fp8_e4m3fn")]
    budget = (peaks[0] + peaks[1]) / 2 / 1e9  # fp8 weights fit, the default does not
    assert cli.main(args + ["--memory-budget", str(budget)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not enough host memory for this run: needs ~" in err
    assert "free: weight_dtype" in err, err
    assert not (tmp_path / "out.mp4").exists()


def test_the_sampler_node_stops_before_moving_any_network_when_memory_is_short(tiny_bundle, tmp_path):
    """MEMO Sampler (and Generate To File, through the same `prepare_run`) checks the plan against
    the host's free memory before a network moves: too little stops with the reason."""
    from support import need

    need("onnx")
    import pack_support as S

    S.load_pack()
    from comfyui_memo.nodes import host, implementation

    def run(name, *args, **kwargs):
        out = implementation(name)(*args, **kwargs)
        return out["result"] if isinstance(out, dict) else out

    root = S.build_models_dir(tmp_path / "models", tiny_bundle)
    with host.use_host(host.StandaloneHost(root)) as h:
        (model,) = run("MemoModelLoader", "memo/memo", "fp32", "sdpa")
        (encoder,) = run("MemoAudioEncoderLoader", "audio_encoders/wav2vec2-base-960h", "fp32")
        (face_model,) = run("MemoFaceModelLoader", "memo/memo", 640, "cpu")
        encoded = run("MemoAudioEncode", encoder, S.comfy_audio_dict(S.speech_like(1.2, 22050), 22050), 10.0, 4, 0.0, 0.0)
        face = run("MemoFaceCrop", face_model, S.portrait(), 64, 2.5, 0.25, 0, "error")
        h.free_memory_bytes = 1000
        inputs = dict(memo_model=model, vae=S.comfy_vae(tiny_bundle["vae"]), reference_image=face[0],
                      memo_audio=encoded[0], face=face[2], seed=7, steps=2, cfg=3.5, past_frames=2, resolution=64)
        moved = len(h.loaded)  # the audio encoder ran
        with pytest.raises(Exception, match="not enough host memory for this run: needs ~"):
            run("MemoSampler", **inputs)
        assert len(h.loaded) == moved  # no MEMO network was moved to the device
        h.free_memory_bytes = None
        images = run("MemoSampler", **inputs)[0]  # the same run with the machine's free memory
        assert images.shape[-1] == 3 and len(h.loaded) > moved


def test_the_released_configs_the_plan_ships_are_the_specification_s():
    """memo_pipeline/released_configs (what `plan` and bench/configs.py read) equals the spec fixtures."""
    import json

    from memo_pipeline.memory_plan import RELEASED_CONFIGS, released_network_configs
    from support import SPEC

    for name, config in released_network_configs().items():
        assert json.loads((SPEC / name / "config.json").read_text()) == json.loads(
            (RELEASED_CONFIGS / name / "config.json").read_text()), name
        assert config and not any(key.startswith("_") for key in config)
