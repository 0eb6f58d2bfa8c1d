"""Reading a golden fixture set: case files, the checksum manifest and the recorded rounding noise.

A set is a folder of `<case>.json` + `<case>.safetensors` pairs. Two optional files describe it:

- `manifest.json`: `{"files": {case: {"bytes": n, "sha256": hex}}}` for every safetensors file.
  When it is present, a case whose file is missing from it, or whose size or hash differs, is not
  run: a changed fixture must never pass silently.
- `tolerances.json`: per case, how far the official code's own fp32 outputs are from an fp64
  rerun (`fp64_vs_fp32.max_abs`). It is shown next to our deviation as the scale of pure rounding
  noise; the pass criteria themselves live in `harness.py`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from ..loading import load_weights_strict

MANIFEST = "manifest.json"
NOISE = "tolerances.json"


def find_cases(directory: Path) -> list[Path]:
    """The `<case>.json` files of a set that have their `<case>.safetensors` next to them."""
    return sorted(p for p in directory.glob("*.json")
                  if p.name not in (MANIFEST, NOISE) and p.with_suffix(".safetensors").is_file())


def read_manifest(directory: Path) -> dict | None:
    """`{case: {"bytes", "sha256"}}` from the set's manifest, or None when the set has none."""
    path = directory / MANIFEST
    if not path.is_file():
        return None
    files = json.loads(path.read_text()).get("files")
    if not isinstance(files, dict):
        raise ValueError(f"{path} has no 'files' table")
    return files


def checksum_problem(weights: Path, entry: dict | None) -> str | None:
    """Why `weights` does not match its manifest entry, or None when size and sha256 agree."""
    if entry is None:
        return f"{weights.name} is not listed in {MANIFEST}"
    size = weights.stat().st_size
    if size != entry["bytes"]:
        return f"{weights.name} has {size} bytes, {MANIFEST} says {entry['bytes']}"
    digest = hashlib.sha256()
    with open(weights, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    if digest.hexdigest() != entry["sha256"]:
        return f"{weights.name} sha256 {digest.hexdigest()[:12]}... differs from {MANIFEST} ({entry['sha256'][:12]}...)"
    return None


def read_rounding_noise(directory: Path) -> dict[str, float]:
    """`{case: max |fp64 - fp32|}` of the official outputs, for the cases the set measured."""
    path = directory / NOISE
    if not path.is_file():
        return {}
    noise = {}
    for case, report in json.loads(path.read_text()).items():
        value = report.get("fp64_vs_fp32", {}).get("max_abs") if isinstance(report, dict) else None
        if isinstance(value, (int, float)):
            noise[case] = float(value)
    return noise


def model_state(tensors: dict, prefix: str = "model.") -> dict:
    """The recorded weights under `prefix`, with the prefix removed."""
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


def load_strict(model: torch.nn.Module, tensors: dict, prefix: str, case: str) -> torch.nn.Module:
    """Load the recorded weights under `prefix` into `model` (every key must match), fp32, eval mode."""
    load_weights_strict(model, model_state(tensors, prefix), f"fixture {case} ({prefix}*)")
    return model.float().eval()


def load_tuned(cpu_tuning: bool, model: torch.nn.Module, tensors: dict, prefix: str, case: str) -> torch.nn.Module:
    """`load_strict`, then the CPU tuning switched on or off (`cpu_tuning.set_cpu_tuning`)."""
    from ..cpu_tuning import set_cpu_tuning

    model = load_strict(model, tensors, prefix, case)
    set_cpu_tuning(cpu_tuning, model)
    return model
