"""What offload hooks cost per forward: the measurement behind `memo_pipeline/offload.py`'s choice.

    python bench/offload_hooks.py [--resolution 128] [--repeats 5] [--threads 2]

On the CPU (execution device = host, so nothing is copied and only the hooks' own work is timed):

- one denoising forward of the small-config diffusion net (bench/configs.py, its inputs captured
  from a real generation) plain, with casting layers (`sequential` here), and under accelerate's
  `cpu_offload` (an `AlignDevicesHook` on every module with parameters);
- the hooks' own work in isolation, per hooked module (for casting layers the two casts of
  weight and bias; for accelerate `pre_forward` + `post_forward` of each module's hook, called
  with the module's real input shape class), scaled to the full-size diffusion net (its module
  count from the released config, built on the meta device): on a shared machine the forward
  times vary by more than the overhead, these do not;
- for `model`: `nn.Module.to(device)` on the full-size diffusion net when nothing moves (what
  accelerate's `CpuOffload` hook does before every forward) against `ModelOffload.activate` for
  the network already active.

Prints one line per figure and a last line of JSON.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

from configs import _networks, build_case, settings_for  # noqa: E402


def captured_step(resolution: int):
    """The small-config diffusion net and the arguments of its second denoising forward (a step that
    only reads the motion memory, so it can be repeated)."""
    case = build_case("small", resolution, 1, cpu_tuning=False)
    net = case.pipeline.models.diffusion_net
    calls = []
    hook = net.register_forward_pre_hook(lambda _m, args, kwargs: calls.append((args, dict(kwargs))), with_kwargs=True)
    with torch.no_grad():
        list(case.pipeline.generate(case.pixels, case.face, case.audio, case.emotion, settings_for(steps=2)))
    hook.remove()
    return net, calls[1]


def best_of(repeats: int, run) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return min(times)


def hooked_modules(net: torch.nn.Module) -> int:
    """Modules accelerate's `attach_align_device_hook` gives a hook: those with direct parameters."""
    return sum(1 for m in net.modules() if next(m.parameters(recurse=False), None) is not None)


def isolated_hook_seconds(casting: torch.nn.Module, accelerated: torch.nn.Module, repeats: int) -> dict[str, float]:
    """Seconds per hooked module of the work each approach adds around a layer's computation."""
    from memo_pipeline.layers import CastingLayer

    x = torch.zeros(1, 8)
    layers = [m for m in casting.modules() if isinstance(m, CastingLayer)]
    hooked = [m for m in accelerated.modules() if getattr(m, "_hf_hook", None) is not None
              and next(m.parameters(recurse=False), None) is not None]

    def casts():
        for layer in layers:
            layer.cast_weight_bias(x)

    def accelerate_hooks():
        for module in hooked:
            args, kwargs = module._hf_hook.pre_forward(module, x)
            module._hf_hook.post_forward(module, args[0])

    return {"casting": best_of(repeats, casts) / len(layers), "accelerate": best_of(repeats, accelerate_hooks) / len(hooked)}


def full_size_diffusion_net():
    from memo_pipeline.loading import build_model
    from memo_pipeline.models.diffusion_net import DiffusionNet

    configs, _ = _networks("mid")
    return build_model(DiffusionNet, configs["diffusion_net"], "diffusion_net", device="meta")


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        from accelerate import cpu_offload
    except ImportError:
        raise SystemExit("bench/offload_hooks.py compares with accelerate's hooks: pip install accelerate") from None

    from memo_pipeline.layers import CastingLayers, use_layers
    from memo_pipeline.offload import ModelOffload

    net, (call_args, call_kwargs) = captured_step(args.resolution)

    def forward(module):
        with torch.no_grad():
            return module(*call_args, **call_kwargs)

    plain_out = forward(net)
    casting = use_layers(copy.deepcopy(net), CastingLayers)
    accelerated = copy.deepcopy(net)
    cpu_offload(accelerated, execution_device=torch.device("cpu"))
    same = {"casting": torch.equal(forward(casting), plain_out), "accelerate": torch.equal(forward(accelerated), plain_out)}
    # interleaved, best of `repeats` each: the machine is shared
    timings = {"plain": [], "casting": [], "accelerate": []}
    for _ in range(args.repeats):
        for name, module in (("plain", net), ("casting", casting), ("accelerate", accelerated)):
            timings[name].append(best_of(1, lambda: forward(module)))
    seconds = {name: min(values) for name, values in timings.items()}
    small_hooked, full = hooked_modules(net), full_size_diffusion_net()
    full_hooked = hooked_modules(full)

    hook_s = isolated_hook_seconds(casting, accelerated, args.repeats)
    move_s = statistics.median(best_of(1, lambda: torch.nn.Module.to(full, device="meta")) for _ in range(args.repeats))
    group = ModelOffload("cpu")
    group.add_network("diffusion_net", net)
    group.activate("diffusion_net")
    activate_s = best_of(args.repeats, lambda: [group.activate("diffusion_net") for _ in range(1000)]) / 1000
    group.remove()

    result = {
        "resolution": args.resolution, "threads": args.threads,
        "small_forward_s": seconds, "small_hooked_modules": small_hooked, "full_hooked_modules": full_hooked,
        "isolated_per_module_us": {k: v * 1e6 for k, v in hook_s.items()},
        "isolated_full_size_per_forward_s": {k: v * full_hooked for k, v in hook_s.items()},
        "full_size_noop_to_s": move_s, "activate_when_active_s": activate_s, "bit_identical": same,
    }
    print(f"small diffusion net, one forward at {args.resolution} px: plain {seconds['plain']:.3f} s, casting layers "
          f"{seconds['casting']:.3f} s, accelerate cpu_offload {seconds['accelerate']:.3f} s "
          f"({small_hooked} hooked modules; outputs equal to plain: {same})")
    for name, value in hook_s.items():
        print(f"{name}, hooks alone: {value * 1e6:.1f} us per module -> {value * full_hooked * 1e3:.0f} ms per forward of "
              f"the full-size diffusion net ({full_hooked} modules with parameters)")
    print(f"model offload: nn.Module.to on the full-size diffusion net when nothing moves {move_s * 1e3:.1f} ms; "
          f"ModelOffload.activate when already active {activate_s * 1e6:.2f} us")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
