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


def measured_phase_peaks(pipeline, settings, resolution: int) -> dict[str, int]:
    """Peak bytes the CPU allocator had in use during each phase of a real run, weights included."""
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile, record_function

    networks = [*pipeline.models.modules().values(), pipeline.vae.vae]
    weights = weight_bytes(*networks)
    with torch.no_grad(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        clip_phases(pipeline, settings, resolution, lambda name: record_function(f"memo_phase::{name}"))
    nodes = list(_walk(prof.profiler.kineto_results.experimental_event_tree()))
    totals = sorted((n.start_time_ns, n.extra_fields.total_allocated) for n in nodes if n.tag == _EventType.Allocation)
    peaks = {}
    for node in nodes:
        if node.name.startswith("memo_phase::"):
            start, end = node.start_time_ns, node.end_time_ns
            before = [total for time, total in totals if time < start]
            inside = [total for time, total in totals if start <= time <= end]
            peaks[node.name.split("::")[1]] = weights + max([before[-1] if before else 0, *inside])
    return peaks


def _case(size: str, resolution: int, dtype: torch.dtype):
    from bench.configs import _networks, build_case, settings_for

    case = build_case(size, resolution, clips=2, dtype=dtype)
    configs, vae = _networks(size)
    return case.pipeline, settings_for(steps=1), configs, vae


def check_accuracy(size: str, resolution: int, dtype: str = "fp32") -> dict[str, tuple[int, int]]:
    from memo_pipeline.loading import resolve_dtype

    pipeline, settings, configs, vae = _case(size, resolution, resolve_dtype(dtype))
    measured = measured_phase_peaks(pipeline, settings, resolution)
    plan = plan_memory(PlanRequest(resolution=resolution, frames_per_clip=settings.frames_per_clip,
                                   past_frames=settings.past_frames, cfg=settings.guidance_scale, dtype=dtype,
                                   device="cpu", configs=configs, vae_config=vae, audio_encoder=False))
    estimated = {p.name: p.device_bytes for p in plan.phases}
    result = {name: (estimated[name], measured[name]) for name in measured}
    for name, (est, real) in result.items():
        assert abs(est - real) <= TOLERANCE * real, f"{size} {dtype} {name}: plan {est} B, measured {real} B ({est / real - 1:+.1%})"
    return result


@pytest.mark.parametrize("size", ["tiny", "small"])
def test_plan_is_within_ten_percent_of_a_real_cpu_run(size):
    print(check_accuracy(size, 64))
