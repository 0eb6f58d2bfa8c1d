"""Shared test helpers: fixture paths and golden cases (pytest fixtures live in conftest.py)."""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import load_file

FIXTURES = Path(__file__).parent / "fixtures"
GOLDEN = FIXTURES / "golden"
SPEC = FIXTURES / "spec"


def golden_case(name: str) -> tuple[dict, dict]:
    return json.loads((GOLDEN / f"{name}.json").read_text()), load_file(str(GOLDEN / f"{name}.safetensors"))
