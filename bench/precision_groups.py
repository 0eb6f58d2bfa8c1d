"""Which MEMO parameters can be stored in a small weight dtype: one group at a time.

    python bench/precision_groups.py [--case golden|small|tiny] [--dtypes fp8_e4m3fn,bf16] [--json OUT]

Every run computes in fp32 with `layers.CastingLayers`; only the stored dtype of the parameters in
one group changes (all other parameters stay fp32), so each row is the error that group's storage
alone adds. `all-stored` stores what `layers.storage_dtypes` stores (the rule `--weight-dtype`
uses), `everything` also the parameters that rule keeps in the compute dtype. Deviation from the
fp32 video: max absolute error and PSNR on the [0, 1] frames; `share` is the group's part of the
generation networks' parameter bytes.

`golden` is the official full-pipeline fixture (its weights and inputs); `small` and `tiny` use
`bench/configs.py` (2 clips, 64 px, 4 steps, random weights: the released weights' statistics
differ, so the golden case is the one to decide by).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

from precision import GOLDEN, psnr  # noqa: E402

from memo_pipeline.layers import (CastingLayers, STORED_LAYER_CLASSES, network_weight_dtype,  # noqa: E402
                                  resolve_weight_dtype, storage_dtypes, to_storage_dtype, use_layers)
from memo_pipeline.loading import GENERATION_NETWORKS  # noqa: E402

NORMS = (torch.nn.GroupNorm, torch.nn.LayerNorm)


def _stored(module) -> bool:
    return isinstance(module, STORED_LAYER_CLASSES)


GROUPS = {
    # name: predicate(network name, parameter name, owning module)
    "norms": lambda net, name, m: isinstance(m, NORMS),
    "biases": lambda net, name, m: _stored(m) and name.endswith(".bias"),
    "time_embedding": lambda net, name, m: _stored(m) and ("time_embedding." in name or "time_emb_proj." in name),
    "conv_in_out": lambda net, name, m: _stored(m) and name.split(".")[0] in ("conv_in", "conv_out"),
    "resnet_convs": lambda net, name, m: _stored(m) and (".resnets." in name or "samplers." in name)
    and "time_emb_proj" not in name,
    "spatial_attention_qkvo": lambda net, name, m: _stored(m) and ".attentions." in name
    and any(f".{a}.to_" in name for a in ("attn1", "attn2")),
    "feed_forward": lambda net, name, m: _stored(m) and ".ff.net." in name,
    "proj_in_out": lambda net, name, m: _stored(m) and (".proj_in." in name or ".proj_out." in name),
    "audio_attention": lambda net, name, m: _stored(m) and ".audio_modules." in name and "adaLN" not in name,
    "emotion_modulation": lambda net, name, m: _stored(m) and "adaLN_modulation" in name,
    "motion_module": lambda net, name, m: _stored(m) and ".motion_modules." in name,
    "audio_proj": lambda net, name, m: net == "audio_proj" and _stored(m),
    "image_proj": lambda net, name, m: net == "image_proj" and _stored(m),
    "reference_net": lambda net, name, m: net == "reference_net" and _stored(m),
}


def owners(network: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """Parameter name -> the module that holds it."""
    return {f"{prefix}.{name}" if prefix else name: module for prefix, module in network.named_modules()
            for name, _ in module.named_parameters(recurse=False)}


def picked_by(predicate):
    """A selection (models -> {(network, parameter name)}) from a per-parameter predicate."""
    def select(models):
        chosen = set()
        for net in GENERATION_NETWORKS:
            network = getattr(models, net)
            held = owners(network)
            chosen |= {(net, name) for name, _ in network.named_parameters() if predicate(net, name, held[name])}
        return chosen
    return select


def stored_by_rule(dtype):
    """The selection `layers.storage_dtypes` makes for `dtype` (compute dtype fp32)."""
    def select(models):
        return {(net, name) for net in GENERATION_NETWORKS if network_weight_dtype(net, dtype) is not None
                for name, stored in storage_dtypes(getattr(models, net), dtype, torch.float32).items() if stored == dtype}
    return select


def store(models, chosen: set, dtype: torch.dtype) -> tuple[int, int]:
    """Store the `chosen` parameters in `dtype`, in place; returns (their bytes in fp32, all
    generation-network parameter bytes in fp32)."""
    picked = total = 0
    for net in GENERATION_NETWORKS:
        for name, param in getattr(models, net).named_parameters():
            total += param.numel() * 4
            if (net, name) in chosen:
                picked += param.numel() * 4
                param.data = to_storage_dtype(param.data, dtype)
    return picked, total


def golden_pipeline():
    from safetensors.torch import load_file

    from memo_pipeline.pipeline import WindowedAudio
    from memo_pipeline.parity.pipeline_case import build_fixture_pipeline, fixture_settings

    meta = json.loads(GOLDEN.with_suffix(".json").read_text())
    tensors = load_file(str(GOLDEN.with_suffix(".safetensors")))
    pipeline = build_fixture_pipeline(meta, tensors, cpu_tuning=False)
    audio = WindowedAudio(tensors["in.audio_emb"], num_frames=meta["loop"]["audio_length"])

    def generate():
        return pipeline.generate(tensors["in.pixel_values"], tensors["in.face_emb"], audio, tensors["in.audio_emotion"],
                                 fixture_settings(meta), noise=lambda k: tensors[f"in.clip{k}.init_noise"])
    return pipeline, generate


def config_pipeline(size: str):
    from configs import build_case, settings_for

    case = build_case(size, 64, clips=2, cpu_tuning=False)

    def generate():
        return case.pipeline.generate(case.pixels, case.face, case.audio, case.emotion, settings_for(steps=4))
    return case.pipeline, generate


def video(case: str, select, dtype) -> tuple[torch.Tensor, int, int]:
    """The case's frames with the parameters `select(models)` names stored in `dtype` (select None:
    all fp32); returns (frames, picked bytes, total bytes)."""
    from memo_pipeline.cpu_tuning import set_cpu_tuning

    pipeline, generate = golden_pipeline() if case == "golden" else config_pipeline(case)
    for net in GENERATION_NETWORKS:
        use_layers(getattr(pipeline.models, net), CastingLayers)
    picked, total = store(pipeline.models, select(pipeline.models), dtype) if select else (0, 1)
    pipeline.models.compute_dtype = torch.float32  # not the first parameter's dtype, which may now be stored smaller
    set_cpu_tuning(True, pipeline)  # a CPU run, tuned as the command line does (it reads the cast weights)
    with torch.no_grad():
        frames = torch.cat([clip.frames for clip in generate()])
    return frames, picked, total


def generate_stored(case: str, select, dtype):
    """Only the frames of `video`."""
    return video(case, select, dtype)[0]


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--case", default="golden", choices=["golden", "small", "tiny"])
    parser.add_argument("--dtypes", default="fp8_e4m3fn,bf16")
    parser.add_argument("--groups", help="comma-separated subset of: " + ", ".join(GROUPS) + " (none: only the whole rule and everything)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    names = [] if args.groups == "none" else args.groups.split(",") if args.groups else list(GROUPS)
    unknown = set(names) - set(GROUPS)
    if unknown:
        parser.error(f"unknown group(s) {', '.join(sorted(unknown))}")

    reference, _, _ = video(args.case, None, None)
    rows = []
    for dtype_name in args.dtypes.split(","):
        dtype = resolve_weight_dtype(dtype_name)
        if dtype is None:
            parser.error("--dtypes names weight dtypes other than 'default'")
        selections = [(name, picked_by(GROUPS[name])) for name in names]
        selections += [("all-stored", stored_by_rule(dtype)), ("everything", picked_by(lambda net, name, m: True))]
        for name, select in selections:
            frames, picked, total = video(args.case, select, dtype)
            row = {"case": args.case, "weight_dtype": dtype_name, "group": name, "share": picked / total,
                   "max_abs": float((frames.double() - reference.double()).abs().max()),
                   "psnr_db": psnr(frames, reference), "finite": bool(torch.isfinite(frames).all())}
            rows.append(row)
            print(f"{args.case} {dtype_name:<10} {name:<22} {100 * row['share']:5.1f} % of bytes  "
                  f"max abs {row['max_abs']:.4f}  PSNR {row['psnr_db']:6.1f} dB{'' if row['finite'] else '  NON-FINITE'}",
                  flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return {"rows": rows}


if __name__ == "__main__":
    main()
