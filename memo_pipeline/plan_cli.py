"""`python -m memo_pipeline plan [generate's settings] [--checkpoint DIR] [--json]`, and the memory
check `generate` runs before it loads anything (`check_job`)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from .memory_plan import (
    PlanRequest,
    budget_bytes,
    check_fit,
    check_request_fits,
    checkpoint_network_configs,
    free_device_bytes,
    free_host_bytes,
    gb,
)

logger = logging.getLogger("memo_pipeline")

SETTING_OPTIONS = ("resolution", "frames_per_clip", "past_frames", "steps", "cfg", "dtype", "weight_dtype", "offload",
                   "device", "vae_batch")
"""`generate` options that change how much memory a run needs: `plan` takes the same definitions."""


def add_memory_budget_argument(parser: argparse.ArgumentParser) -> None:
    """`--memory-budget GB`: the most memory a run may plan to use (device memory on a GPU, host
    memory on a CPU), for sharing a machine; the run stops before loading when the plan needs more."""
    parser.add_argument("--memory-budget", type=float, metavar="GB",
                        help="most memory (GB, 1e9 bytes) the run may use on its device (on a CPU: host memory); "
                             "checked against the memory plan before anything loads (default: the free memory)")


def add_parser(sub, generate_parser: argparse.ArgumentParser) -> None:
    plan = sub.add_parser(
        "plan", help="estimate a run's peak memory per phase, from shapes only (no weights read)",
        description="Builds the networks without weights and runs one clip's phases on shape-only tensors, counting "
                    "the memory alive; prints the peak per phase on the device and on the host.")
    for action in generate_parser._actions:
        if action.dest in SETTING_OPTIONS:
            plan._add_action(action)
    plan.add_argument("--checkpoint", type=Path, help="MEMO folder whose config.json files describe the networks "
                      "(default: the released configs); weights are not read")
    plan.add_argument("--vae", type=Path, help="VAE folder or single file to plan for (default: sd-vae-ft-mse's shape)")
    plan.add_argument("--wav2vec", type=Path, help="wav2vec2 folder or single file to plan for (default: wav2vec2-base's shape)")
    add_memory_budget_argument(plan)
    plan.add_argument("--json", action="store_true", help="print one JSON object instead of the table")


def request_from_args(args, configs: dict | None = None) -> PlanRequest:
    """The plan of the run a `generate` / `plan` command line describes."""
    return PlanRequest(resolution=args.resolution, frames_per_clip=args.frames_per_clip, past_frames=args.past_frames,
                       steps=args.steps, cfg=args.cfg, dtype=args.dtype,
                       weight_dtype=getattr(args, "weight_dtype", None) or "default",
                       offload=getattr(args, "offload", None) or "none", device=args.device,
                       vae_batch=getattr(args, "vae_batch", None), configs=configs)


def main_plan(args) -> int:
    try:
        request = request_from_args(args, checkpoint_network_configs(args.checkpoint) if args.checkpoint else None)
        request = request.replace(vae_config=vae_config_of(args.vae) if args.vae else None,
                                  wav2vec_config=wav2vec_config_of(args.wav2vec) if args.wav2vec else None)
        fit = check_fit(request, budget_bytes(args.memory_budget))
    except (ValueError, RuntimeError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    plan = fit.plan
    if args.json:
        out = plan.to_json()
        out.update(free_bytes=fit.free_bytes, fits=fit.verdict, message=fit.message)
        print(json.dumps(out))
        return 0
    r = request
    print(f"memory plan: {r.resolution} px, {r.frames_per_clip} frames per clip, {r.past_frames} past frames, "
          f"cfg {r.cfg:g}, compute {r.dtype}, weights {r.weight_dtype}, offload {r.offload}, device {r.device}")
    host_label = "host (= device)" if plan.on_cpu else "host"
    print(f"{'phase':<12}{'device':>12}{host_label:>18}")
    for phase in plan.phases:
        print(f"{phase.name:<12}{gb(phase.device_bytes):>12}{gb(phase.host_bytes):>18}")
    print(f"{'peak':<12}{gb(plan.peak_device_bytes):>12}{gb(plan.peak_host_bytes):>18}")
    device_free = free_device_bytes(r.device)
    print(f"free now: device {gb(device_free) if device_free is not None else 'unknown'}, host {gb(free_host_bytes())}"
          + (f"; budget {gb(budget_bytes(args.memory_budget))}" if args.memory_budget else ""))
    print(f"{fit.verdict}: {fit.message}")
    for note in plan.notes:
        print(f"note: {note}")
    return 0


def vae_config_of(path: str | os.PathLike) -> dict:
    """The AutoencoderKL config of a VAE folder or single file, from config.json or the file's
    header (tensor shapes; no tensor is read), by the loader's own rules."""
    import torch

    from .model_files import read_safetensors_header
    from .vae import single_file_state, vae_folder_files, vae_layout

    if vae_layout(path) == "folder":
        config, _ = vae_folder_files(path)
        return _strip(config)
    shapes, metadata = read_safetensors_header(path)
    config, _ = single_file_state({k: torch.empty(v, device="meta") for k, v in shapes.items()}, metadata, os.fspath(path))
    return config


def wav2vec_config_of(path: str | os.PathLike) -> dict:
    """The Wav2Vec2Config (as a dict) of a wav2vec2 folder or single file, from config.json or the
    file's header, by the loader's own rules."""
    import torch

    from .audio.wav2vec2_weights import infer_config, normalize_state_dict, read_folder_config
    from .model_files import read_safetensors_header

    path = Path(path)
    if path.is_dir():
        config, _ = read_folder_config(path)
    else:
        shapes, _ = read_safetensors_header(path)
        config = infer_config(normalize_state_dict({k: torch.empty(v, device="meta") for k, v in shapes.items()},
                                                   os.fspath(path)), os.fspath(path))
    return config.to_dict()


def job_request(job) -> PlanRequest:
    """The plan of a `cli.Job`: its settings and the configs of its checkpoint, VAE and wav2vec2."""
    settings = job.settings
    return PlanRequest(resolution=job.resolution, frames_per_clip=settings.frames_per_clip,
                       past_frames=settings.past_frames, steps=settings.steps, cfg=settings.guidance_scale,
                       dtype=job.dtype, weight_dtype=getattr(job, "weight_dtype", None) or "default",
                       offload=getattr(job, "offload", None) or "none", device=job.device, vae_batch=job.vae_batch_size,
                       configs=checkpoint_network_configs(job.checkpoint), vae_config=vae_config_of(job.vae),
                       wav2vec_config=wav2vec_config_of(job.wav2vec))


def _strip(config: dict) -> dict:
    return {k: v for k, v in config.items() if not k.startswith("_")}


def check_job(job) -> None:
    """The check `generate` runs before loading: see `check_request_fits`."""
    check_request_fits(job_request(job), getattr(job, "memory_budget", None))
