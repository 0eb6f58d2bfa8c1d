"""Time one denoising step of the diffusion net (CFG batch of 2) on CPU and report peak memory.

    python bench/bench_diffusion_step.py [--latent 32] [--frames 16] [--past 16] [--widths 320,640,1280,1280]

Defaults: the full SD1.5-width MEMO configuration (1.68 B parameters, fp32) on 32x32 latents
(256 px video), 16 frames and 16 motion frames. 64x64 latents (512 px) need more than the
24 GB of a CI machine in fp32 on CPU, so they are only used when asked for. Weights are random:
speed does not depend on their values. Prints seconds per step for the memory-writing first step
and for the later steps, and the peak resident memory of the process.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from memo_pipeline.cpu_tuning import apply_cpu_tuning, tuned_allocator
from memo_pipeline.loading import build_model, move, resolve_dtype
from memo_pipeline.models.diffusion_net import DiffusionNet
from memo_pipeline.models.clip_constants import ClipConstants
from memo_pipeline.models.motion_memory import MotionMemory
from memo_pipeline.models.reference_features import ReferenceFeatures

SPEC = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "spec" / "diffusion_net" / "config.json"


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def fake_reference_features(config: dict, batch: int, stack: int, latent: int, dtype) -> ReferenceFeatures:
    """Tensors shaped like the reference net's output for this config (values do not matter for timing)."""
    widths = config["block_out_channels"]
    down, up = [], []
    size = latent
    for i, kind in enumerate(config["down_block_types"]):
        n = config["layers_per_block"]
        if kind.startswith("CrossAttn"):
            down.append([torch.randn(batch * stack, size * size, widths[i], dtype=dtype) for _ in range(n)])
        else:
            down.append([torch.randn(batch * stack, widths[i], size, size, dtype=dtype) for _ in range(n)])
        if i < len(widths) - 1:
            size //= 2
    mid = [torch.randn(batch * stack, size * size, widths[-1], dtype=dtype)]
    for i, kind in enumerate(config["up_block_types"]):
        width = list(reversed(widths))[i]
        n = config["layers_per_block"] + 1
        if kind.startswith("CrossAttn"):
            up.append([torch.randn(batch * stack, size * size, width, dtype=dtype) for _ in range(n)])
        else:
            up.append([torch.randn(batch * stack, width, size, size, dtype=dtype) for _ in range(n)])
        if i < len(widths) - 1:
            size *= 2
    return ReferenceFeatures(down, mid, up)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--latent", type=int, default=32)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--past", type=int, default=16)
    parser.add_argument("--widths", default="320,640,1280,1280")
    parser.add_argument("--steps", type=int, default=2, help="timed read-only steps after the memory-writing one")
    parser.add_argument("--dtype", default="fp32")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--no-cpu-tuning", action="store_true", help="the plain networks and glibc's heap settings")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.no_cpu_tuning:
        run(args)
        return
    with tuned_allocator():  # as the command line runs on a CPU
        run(args, tuned=True)


def run(args, tuned: bool = False) -> None:
    dtype = resolve_dtype(args.dtype)
    config = json.loads(SPEC.read_text())
    config["block_out_channels"] = [int(w) for w in args.widths.split(",")]
    with torch.no_grad():
        model = move(build_model(DiffusionNet, config, "bench config"), dtype=dtype).eval()
        if tuned:
            apply_cpu_tuning(model)
        params = sum(p.numel() for p in model.parameters())
        batch, c = 2, config["cross_attention_dim"]
        features = fake_reference_features(config, batch, 1 + args.past, args.latent, dtype)
        sample = torch.randn(batch, 4, args.frames, args.latent, args.latent, dtype=dtype)
        face = torch.randn(batch, 4, c, dtype=dtype)
        audio = torch.randn(batch, args.frames, 32, config["audio_attention_dim"], dtype=dtype)
        emotion = torch.tensor([9, 4])
        uc_mask = torch.arange(batch * args.frames) < args.frames
        memory, constants = MotionMemory(), ClipConstants()
        t0 = time.perf_counter()
        model(sample, features, torch.tensor(1000.0), face, audio, emotion, memory, "reset", uc_mask, constants=constants)
        first = time.perf_counter() - t0
        times = []
        for _ in range(args.steps):
            t0 = time.perf_counter()
            model(sample, features, torch.tensor(500.0), face, audio, emotion, memory, "read", uc_mask, constants=constants)
            times.append(time.perf_counter() - t0)
    memory_gb = sum(v.numel() * v.element_size() for v in list(memory.kv.values()) + list(memory.z.values())) / 1024**3
    print(f"diffusion net: widths {config['block_out_channels']}, {params / 1e9:.2f} B params, {args.dtype}, "
          f"latent {args.latent}x{args.latent} ({args.latent * 8} px), {args.frames} frames, {args.past} motion frames, "
          f"CFG batch 2, {args.threads} threads, CPU tuning {'on' if tuned else 'off'}")
    print(f"first step (writes motion memory): {first:.2f} s")
    print(f"later steps: {min(times):.2f} s/step (best of {len(times)})")
    print(f"motion memory: {memory_gb:.2f} GB; peak RSS: {peak_rss_gb():.2f} GB")


if __name__ == "__main__":
    main()
