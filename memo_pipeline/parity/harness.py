"""The parity command: run every case of a fixture set, compare, report.

Pass criteria are the fixture set's suggested ones (tests/fixtures/golden/README.md): single
modules atol 2e-5 / rtol 1e-5, the two UNets atol 5e-5 / rtol 1e-4, the full pipeline atol 1e-4;
integer outputs (labels) must match exactly. A case fails when any output is missing, has another
shape, is not finite or exceeds `atol + rtol * |ref|` anywhere. Every case runs with the CPU
tuning (`memo_pipeline.cpu_tuning`) off and on by default, with the same tolerances; cases
without an upsampler or a UNet have nothing the tuning changes and give the same numbers twice.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from . import modules
from .audio_case import audio_preprocess_case
from .fixtures import checksum_problem, find_cases, read_manifest, read_rounding_noise
from .pipeline_case import run_full_pipeline_case


@dataclass(frozen=True)
class Tolerance:
    atol: float
    rtol: float


MODULE_TOL = Tolerance(2e-5, 1e-5)
UNET_TOL = Tolerance(5e-5, 1e-4)
PIPELINE_TOL = Tolerance(1e-4, 0.0)
UNKNOWN_TOL = Tolerance(float("nan"), float("nan"))


@dataclass
class CaseResult:
    case: str
    max_abs: float
    tolerance: Tolerance
    passed: bool
    detail: str = ""
    rounding_noise: float | None = None  # the official fp32 outputs' own max |fp64 - fp32|, if recorded
    cpu_tuning: bool = False


# case kind -> (runner, tolerance). Case files name their official class; see `case_kind`.
RUNNERS = {
    "memory_linear_attention": (modules.run_memory_linear_attention, MODULE_TOL),
    "memory_attention": (modules.run_memory_attention, MODULE_TOL),
    "spatial_ref_block": (modules.run_spatial_ref_block, MODULE_TOL),
    "audio_block": (modules.run_audio_block, MODULE_TOL),
    "audio_module": (modules.run_audio_module, MODULE_TOL),
    "projection": (modules.run_projection, MODULE_TOL),
    "reference_net": (modules.run_reference_net, UNET_TOL),
    "diffusion_net": (modules.run_diffusion_net, UNET_TOL),
    "full_pipeline": (run_full_pipeline_case, PIPELINE_TOL),
    "audio_preprocess": (audio_preprocess_case, MODULE_TOL),
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
    """The runner for a case: from its official class or function, else from its name."""
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
"""Cases that run with or without the diffusion net's per-clip constants."""


def run_case(meta: dict, tensors: dict, clip_constants: bool = True, cpu_tuning: bool = False) -> CaseResult:
    """One case, its networks built with the CPU tuning on or off (`cpu_tuning`)."""
    name = meta.get("case", "?")
    kind = case_kind(meta)
    runner, tol = RUNNERS[kind]
    expected = {k: v for k, v in tensors.items() if k.startswith("out.")}
    options = {"clip_constants": clip_constants} if kind in CACHING_KINDS else {}
    with torch.no_grad():
        produced = runner(meta, tensors, cpu_tuning=cpu_tuning, **options)
    worst, failures = compare(produced, expected, tol)
    return CaseResult(name, worst, tol, not failures, "; ".join(failures[:3]), cpu_tuning=cpu_tuning)


def _not_run(name: str, reason: str, cpu_tuning: bool = False) -> CaseResult:
    return CaseResult(name, float("nan"), UNKNOWN_TOL, False, reason, cpu_tuning=cpu_tuning)


TUNING_MODES = {"off": (False,), "on": (True,), "both": (False, True)}
"""`--cpu-tuning` choices: the tuning states every case runs in."""


def run_directory(directory: str | Path, only: list[str] | None = None, clip_constants: bool = True,
                  cpu_tuning: tuple[bool, ...] = (False, True)) -> list[CaseResult]:
    """Run the set's cases (or those named in `only`) once per state in `cpu_tuning`; with a
    manifest, check each file first."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    noise = read_rounding_noise(directory)
    results = []
    for path in find_cases(directory):
        meta = json.loads(path.read_text())
        name = meta.get("case", path.stem)
        if only and name not in only:
            continue
        weights = path.with_suffix(".safetensors")
        problem = None if manifest is None else checksum_problem(weights, manifest.get(path.stem))
        if problem:
            results.append(_not_run(name, f"fixture not run: {problem}"))
            continue
        tensors = load_file(str(weights))
        for tuned in cpu_tuning:
            try:
                result = run_case(meta, tensors, clip_constants, cpu_tuning=tuned)
            except Exception as err:  # a case that cannot run counts as a failure, with the reason
                result = _not_run(name, f"could not run: {type(err).__name__}: {err}", tuned)
            result.rounding_noise = noise.get(path.stem)
            results.append(result)
    if manifest is not None:  # a listed fixture that is gone must not go unnoticed
        present = {p.stem for p in find_cases(directory)}
        for missing in sorted(set(manifest) - present):
            if not only or missing in only:
                results.append(_not_run(missing, f"fixture not run: {missing}.json/.safetensors listed in the manifest are missing"))
    return results


def main(argv: list[str] | None = None) -> int:
    from . import __doc__ as package_doc

    parser = argparse.ArgumentParser(prog="python -m memo_pipeline.parity", description=package_doc.split("\n\n")[0])
    parser.add_argument("directory", help="fixture folder (<case>.json + <case>.safetensors, optional manifest.json)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text lines")
    parser.add_argument("--case", action="append", help="run only this case (repeatable)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (fixtures were made with 1)")
    parser.add_argument("--no-clip-constants", action="store_true",
                        help="compute the diffusion net's per-clip constants at every step instead of once per clip")
    parser.add_argument("--cpu-tuning", choices=sorted(TUNING_MODES), default="both",
                        help="build the networks with the CPU tuning off, on, or each case both ways (default: both)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if not Path(args.directory).is_dir():
        print(f"error: {args.directory} is not a folder", file=sys.stderr)
        return 2
    results = run_directory(args.directory, args.case, clip_constants=not args.no_clip_constants,
                            cpu_tuning=TUNING_MODES[args.cpu_tuning])
    passed = sum(r.passed for r in results)
    failed = len(results) - passed
    if args.json:
        print(json.dumps({"cases": [{"case": r.case, "cpu_tuning": "on" if r.cpu_tuning else "off", "max_abs": r.max_abs, "atol": r.tolerance.atol,
                                     "rtol": r.tolerance.rtol, "official_fp64_vs_fp32": r.rounding_noise,
                                     "passed": r.passed, "detail": r.detail} for r in results],
                          "passed": passed, "failed": failed}, indent=1))
    else:
        for r in results:
            status = "PASS" if r.passed else "FAIL"
            noise = f"  (official fp32 noise {r.rounding_noise:.1e})" if r.rounding_noise is not None else ""
            print(f"{r.case:<26} tuning {'on ' if r.cpu_tuning else 'off'}  max_abs={r.max_abs:.3e}  tol(atol={r.tolerance.atol:g}, rtol={r.tolerance.rtol:g})  "
                  f"{status}{noise}{'  ' + r.detail if r.detail else ''}")
        print(f"{passed} passed, {failed} failed")
    return 0 if results and failed == 0 else 1
