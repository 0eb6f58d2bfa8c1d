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
