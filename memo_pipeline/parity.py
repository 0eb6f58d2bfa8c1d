"""Replay golden fixtures made with the official MEMO code and compare every recorded output.

    python -m memo_pipeline.parity DIR [--json] [--case NAME ...]

A fixture is `<case>.json` (constructor/config, ordered `calls`, tensor names) plus
`<case>.safetensors` (`model.*` weights, `in.*` inputs, `out.*` outputs). Weights are loaded
strictly into *our* modules, the calls are replayed in order (motion memory carries over), and
each `out.*` is compared with |ours - ref| <= atol + rtol * |ref|. Exit status is non-zero if any
case fails or cannot be run.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from .loading import build_model, load_weights_strict
from .models.audio_attention import AudioModule, JointAudioBlock
from .models.clip_constants import ClipConstants
from .models.diffusion_net import DiffusionNet
from .models.emotion_classifier import AudioEmotionClassifier
from .models.motion_memory import MotionMemory
from .models.motion_module import MemoryLinearAttention, MotionModule, memory_update_from_flags
from .models.projections import AudioProjection, ImageProjection
from .models.reference_features import ReferenceFeatures
from .models.reference_net import ReferenceNet
from .models.spatial_attention import SpatialTransformer


@dataclass(frozen=True)
class Tolerance:
    atol: float
    rtol: float


# suggested criteria of the fixture set (golden/README.md)
MODULE_TOL = Tolerance(2e-5, 1e-5)
UNET_TOL = Tolerance(5e-5, 1e-4)
PIPELINE_TOL = Tolerance(1e-4, 0.0)
EXACT = Tolerance(0.0, 0.0)


@dataclass
class CaseResult:
    case: str
    max_abs: float
    tolerance: Tolerance
    passed: bool
    detail: str = ""


def model_state(tensors: dict, prefix: str = "model.") -> dict:
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


def load_strict(model: torch.nn.Module, tensors: dict, prefix: str, case: str) -> torch.nn.Module:
    load_weights_strict(model, model_state(tensors, prefix), f"fixture {case} ({prefix}*)")
    return model.float().eval()


def _fixture_key(prefix: str, section: str, level: int, layer: int, feature: torch.Tensor) -> str:
    """Fixture name of one reference feature: `<prefix>.<section>.<level>.<layer>`, plus the
    transformer-block index `.0` for token features (the official nesting)."""
    return f"{prefix}.{section}.{level}.{layer}" + (".0" if feature.dim() == 3 else "")


def features_from_fixture(tensors: dict, prefix: str) -> ReferenceFeatures:
    """`<prefix>.down.<level>.<layer>[.0]` tensors -> `ReferenceFeatures` (mid is level 0 of `mid`)."""
    nested = {"down": {}, "mid": {}, "up": {}}
    for name, value in tensors.items():
        if name.startswith(prefix + "."):
            section, level, layer, *block = name[len(prefix) + 1:].split(".")
            if block not in ([], ["0"]):
                raise ValueError(f"{name}: only the first transformer block of a layer is a reference feature")
            nested[section].setdefault(int(level), {})[int(layer)] = value
    ordered = {section: [[layers[j] for j in sorted(layers)] for _, layers in sorted(levels.items())]
               for section, levels in nested.items()}
    return ReferenceFeatures(ordered["down"], ordered["mid"][0], ordered["up"])


def features_to_fixture(features: ReferenceFeatures, prefix: str) -> dict:
    flat = {}
    for section, levels in (("down", features.down), ("mid", [features.mid]), ("up", features.up)):
        for i, layers in enumerate(levels):
            for j, feature in enumerate(layers):
                flat[_fixture_key(prefix, section, i, j, feature)] = feature
    return flat


def fold_frames(video: torch.Tensor) -> torch.Tensor:
    """`(b, c, f, h, w)` -> `((b f), c, h, w)`, the layout our modules take."""
    b, c, f, h, w = video.shape
    return video.transpose(1, 2).reshape(b * f, c, h, w)


def unfold_frames(frames: torch.Tensor, num_frames: int) -> torch.Tensor:
    rows, c, h, w = frames.shape
    return frames.reshape(rows // num_frames, num_frames, c, h, w).transpose(1, 2)


def run_memory_linear_attention(meta, t):
    c = meta["constructor"]
    model = load_strict(MemoryLinearAttention(c["query_dim"], c["heads"], c["dim_head"], c.get("bias", False),
                                              c.get("temporal_position_encoding", False),
                                              c.get("temporal_position_encoding_max_len", 24)), t, "model.", meta["case"])
    memory, out = MotionMemory(), {}
    for call in meta["calls"]:
        update = memory_update_from_flags(call["is_new_audio"], call["update_past_memory"])
        hidden = model(t[call["hidden_states"]], t[call["motion_frames"]], call["video_length"], memory, update)
        out[call["outputs"][0]] = hidden
        for name in call["outputs"][1:]:
            kind = name.rsplit(".", 1)[1]
            out[name] = (memory.kv if kind == "KV" else memory.z)[model.slot_name]
    return out


def run_memory_attention(meta, t):
    model = load_strict(MotionModule(**meta["constructor"]), t, "model.", meta["case"])
    memory, out = MotionMemory(), {}
    for call in meta["calls"]:
        update = memory_update_from_flags(call["is_new_audio"], call["update_past_memory"])
        hidden, motion = t[call["hidden_states"]], t[call["motion_frames"]]
        frames = hidden.shape[2]
        out[call["outputs"][0]] = unfold_frames(model(fold_frames(hidden), fold_frames(motion), frames, memory, update), frames)
        for name in call["outputs"][1:]:
            slot, kind = name.split(".memory.", 1)[1].rsplit(".", 1)
            out[name] = (memory.kv if kind == "KV" else memory.z)[slot]
    return out


def run_spatial_ref_block(meta, t):
    c = meta["constructor"]
    model = load_strict(SpatialTransformer(c["num_attention_heads"], c["attention_head_dim"], c["in_channels"],
                                           c["cross_attention_dim"], c.get("norm_num_groups", 32), c.get("num_layers", 1),
                                           c.get("use_linear_projection", False), c.get("upcast_attention", False)),
                        t, "model.", meta["case"])
    out = {}
    for call in meta["calls"]:
        hidden, reference = (t[name] for name in call["args"])
        mask = t[call["uc_mask"]] if call.get("uc_mask") else None
        frames = hidden.shape[2]
        out[call["output"]] = unfold_frames(model(fold_frames(hidden), reference, t[call["encoder_hidden_states"]], frames, mask), frames)
    return out


def _emotion(t, name):
    return t[name].long()


def run_audio_block(meta, t):
    c = meta["constructor"]
    model = load_strict(JointAudioBlock(c["dim"], c["num_attention_heads"], c["attention_head_dim"], c["cross_attention_dim"],
                                        c.get("emo_drop_rate", 0.3), c.get("is_final_block", False),
                                        c.get("upcast_attention", False)), t, "model.", meta["case"])
    return _replay_audio_calls(model, meta, t)


def run_audio_module(meta, t):
    c = meta["constructor"]
    model = load_strict(AudioModule(c["num_attention_heads"], c["attention_head_dim"], c["in_channels"], c["cross_attention_dim"],
                                    c.get("norm_num_groups", 32), c.get("num_layers", 1), c.get("use_linear_projection", False),
                                    c.get("emo_drop_rate", 0.3), c.get("is_final_block", False), c.get("upcast_attention", False)),
                        t, "model.", meta["case"])
    return _replay_audio_calls(model, meta, t)


def _replay_audio_calls(model, meta, t):
    """Audio block and audio module calls: (video tokens, audio tokens, emotion) -> both outputs."""
    out = {}
    for call in meta["calls"]:
        hidden = t[call["hidden_states"]]
        if hidden.dim() == 5:  # a whole audio module: video in, video out
            frames = hidden.shape[2]
            hidden, audio = model(fold_frames(hidden), t[call["encoder_hidden_states"]], _emotion(t, call["emotion"]))
            hidden = unfold_frames(hidden, frames)
        else:
            hidden, audio = model(hidden, t[call["encoder_hidden_states"]], _emotion(t, call["emotion"]))
        out[call["outputs"][0]] = hidden
        if len(call["outputs"]) > 1:
            out[call["outputs"][1]] = audio
    return out


def _argument(t, expression: str) -> torch.Tensor:
    """Tensor arguments as the fixtures write them: a name, `zeros_like(name)` or `name[a:b]`."""
    match = re.fullmatch(r"zeros_like\((.+)\)", expression)
    if match:
        return torch.zeros_like(t[match.group(1)])
    match = re.fullmatch(r"(.+)\[(\d*):(\d*)\]", expression)
    if match:
        name, start, stop = match.groups()
        return t[name][int(start or 0): int(stop) if stop else None]
    return t[expression]


def run_projection(meta, t):
    kind = meta["official_class"].split()[0].rsplit(".", 1)[-1]
    cls = {"AudioProjModel": AudioProjection, "ImageProjModel": ImageProjection,
           "AudioEmotionClassifierModel": AudioEmotionClassifier}[kind]
    model = load_strict(cls(**meta["constructor"]), t, "model.", meta["case"])
    out = {}
    for call in meta["calls"]:
        argument = next(v for k, v in call.items() if k != "output")
        out[call["output"]] = model(_argument(t, argument))
        if cls is AudioEmotionClassifier:
            for name in t:
                if name.startswith("out.") and name.endswith("label"):
                    out[name] = model.predict(_argument(t, argument)).to(t[name].dtype)
    return out


def run_reference_net(meta, t):
    model = load_strict(build_model(ReferenceNet, meta["config"], "fixture config"), t, "model.", meta["case"])
    call = meta["calls"][0]
    sample = t[call["sample"].split(".repeat(")[0]]
    copies = int(re.search(r"\.repeat\((\d+)", call["sample"]).group(1)) if ".repeat(" in call["sample"] else 1
    features = model(sample.repeat(copies, 1, 1, 1), torch.tensor(0.0), t[call["encoder_hidden_states"]])
    return features_to_fixture(features, call["output"].rstrip(".*"))


def run_diffusion_net(meta, t, clip_constants: bool = True):
    """Every call of the fixture in order; with `clip_constants`, the calls of one clip (same
    reference features, face tokens and emotion) share one `ClipConstants`."""
    model = load_strict(build_model(DiffusionNet, meta["config"], "fixture config"), t, "model.", meta["case"])
    memory, out, prepared = MotionMemory(), {}, {}
    for call in meta["calls"]:
        features = features_from_fixture(t, call["ref_features"].rstrip(".*"))
        uc_mask = t[call["uc_mask"]] if call.get("uc_mask") else None
        face, emotion = t[call["encoder_hidden_states"]], _emotion(t, call["audio_emotion"])
        constants = None
        if clip_constants:
            key = (call["ref_features"], call["encoder_hidden_states"], call["audio_emotion"])
            constants = prepared.setdefault(key, ClipConstants())
        out[call["output"]] = model(
            t[call["sample"]], features, t[call["timestep"]], face, t[call["audio_embedding"]], emotion, memory,
            memory_update_from_flags(call["is_new_audio"], call["update_past_memory"]), uc_mask, constants=constants,
        )
    return out


def run_full_pipeline(meta, t, clip_constants: bool = True):
    from .pipeline_parity import run_full_pipeline_case

    return run_full_pipeline_case(meta, t, clip_constants=clip_constants)


def run_audio_preprocess(meta, t):
    from .audio.parity_case import audio_preprocess_case

    return audio_preprocess_case(meta, t)


# case -> (runner, tolerance). Unknown case names are matched through their official class.
RUNNERS = {
    "memory_linear_attention": (run_memory_linear_attention, MODULE_TOL),
    "memory_attention": (run_memory_attention, MODULE_TOL),
    "spatial_ref_block": (run_spatial_ref_block, MODULE_TOL),
    "audio_block": (run_audio_block, MODULE_TOL),
    "audio_module": (run_audio_module, MODULE_TOL),
    "projection": (run_projection, MODULE_TOL),
    "reference_net": (run_reference_net, UNET_TOL),
    "diffusion_net": (run_diffusion_net, UNET_TOL),
    "full_pipeline": (run_full_pipeline, PIPELINE_TOL),
    "audio_preprocess": (run_audio_preprocess, MODULE_TOL),
}

OFFICIAL_CLASSES = [
    ("MemoryLinearAttnTemporalModule", "memory_attention"),
    ("MemoryLinearAttention", "memory_linear_attention"),
    ("use_audio_module=True", "audio_module"),
    ("use_audio_module=False", "spatial_ref_block"),
    ("JointAudioTemporalBasicTransformerBlock", "audio_block"),
    ("AudioProjModel", "projection"),
    ("ImageProjModel", "projection"),
    ("AudioEmotionClassifierModel", "projection"),
    ("UNet2DConditionModel", "reference_net"),
    ("UNet3DConditionModel", "diffusion_net"),
    ("VideoPipeline", "full_pipeline"),
    ("preprocess_audio", "audio_preprocess"),
]


def case_kind(meta: dict) -> str:
    origin = f"{meta.get('official_class', '')} {meta.get('official_function', '')}"
    for marker, kind in OFFICIAL_CLASSES:
        if marker in origin:
            return kind
    name = meta.get("case", "")
    if name in RUNNERS:
        return name
    raise KeyError(f"no runner for case '{name}' ({origin.strip() or 'no official class given'})")


def compare(produced: dict, expected: dict, tol: Tolerance) -> tuple[float, list[str]]:
    worst, failures = 0.0, []
    for name, ref in sorted(expected.items()):
        if name not in produced or produced[name] is None:
            failures.append(f"{name} not reproduced")
            continue
        ours = produced[name].detach().to("cpu")
        if ours.shape != ref.shape:
            failures.append(f"{name} shape {tuple(ours.shape)} != {tuple(ref.shape)}")
            continue
        if not ref.is_floating_point():
            if not torch.equal(ours.to(ref.dtype), ref):
                failures.append(f"{name} differs (exact match required)")
            continue
        diff = (ours.double() - ref.double()).abs()
        worst = max(worst, float(diff.max()) if diff.numel() else 0.0)
        if bool((diff > tol.atol + tol.rtol * ref.double().abs()).any()) or not torch.isfinite(ours).all():
            failures.append(f"{name} max abs {float(diff.max()):.3g}")
    return worst, failures


CACHING_KINDS = ("diffusion_net", "full_pipeline")
"""Cases that run with and without the diffusion net's per-clip constants."""


def run_case(meta: dict, tensors: dict, clip_constants: bool = True) -> CaseResult:
    name = meta.get("case", "?")
    kind = case_kind(meta)
    runner, tol = RUNNERS[kind]
    expected = {k: v for k, v in tensors.items() if k.startswith("out.")}
    if kind == "projection" and any(not v.is_floating_point() for v in expected.values()):
        tol = MODULE_TOL
    options = {"clip_constants": clip_constants} if kind in CACHING_KINDS else {}
    with torch.no_grad():
        produced = runner(meta, tensors, **options)
    worst, failures = compare(produced, expected, tol)
    return CaseResult(name, worst, tol, not failures, "; ".join(failures[:3]))


def find_cases(directory: Path) -> list[Path]:
    return sorted(p for p in directory.glob("*.json") if p.with_suffix(".safetensors").is_file())


def run_directory(directory: str | Path, only: list[str] | None = None, clip_constants: bool = True) -> list[CaseResult]:
    results = []
    for path in find_cases(Path(directory)):
        meta = json.loads(path.read_text())
        name = meta.get("case", path.stem)
        if only and name not in only:
            continue
        try:
            results.append(run_case(meta, load_file(str(path.with_suffix(".safetensors"))), clip_constants))
        except Exception as err:  # a case that cannot run counts as a failure, with the reason
            results.append(CaseResult(name, float("nan"), Tolerance(float("nan"), float("nan")), False,
                                      f"could not run: {type(err).__name__}: {err}"))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m memo_pipeline.parity", description=__doc__.split("\n\n")[0])
    parser.add_argument("directory", help="fixture folder (<case>.json + <case>.safetensors)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text lines")
    parser.add_argument("--case", action="append", help="run only this case (repeatable)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (fixtures were made with 1)")
    parser.add_argument("--no-clip-constants", action="store_true",
                        help="compute the diffusion net's per-clip constants at every step instead of once per clip")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if not Path(args.directory).is_dir():
        print(f"error: {args.directory} is not a folder", file=sys.stderr)
        return 2
    results = run_directory(args.directory, args.case, clip_constants=not args.no_clip_constants)
    passed = sum(r.passed for r in results)
    failed = len(results) - passed
    if args.json:
        print(json.dumps({"cases": [{"case": r.case, "max_abs": r.max_abs, "atol": r.tolerance.atol,
                                     "rtol": r.tolerance.rtol, "passed": r.passed, "detail": r.detail} for r in results],
                          "passed": passed, "failed": failed}, indent=1))
    else:
        for r in results:
            status = "PASS" if r.passed else "FAIL"
            print(f"{r.case:<26} max_abs={r.max_abs:.3e}  tol(atol={r.tolerance.atol:g}, rtol={r.tolerance.rtol:g})  "
                  f"{status}{'  ' + r.detail if r.detail else ''}")
        print(f"{passed} passed, {failed} failed")
    return 0 if results and failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
