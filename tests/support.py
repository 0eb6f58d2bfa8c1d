"""Shared test helpers: fixture paths and golden cases (pytest fixtures live in conftest.py)."""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

FIXTURES = Path(__file__).parent / "fixtures"
GOLDEN = FIXTURES / "golden"
SPEC = FIXTURES / "spec"


def in_ci() -> bool:
    """True on CI (`CI=true`, as CI services and .ci/run set it)."""
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def need(module: str):
    """Import a package that requirements.txt / requirements-test.txt install.

    Developers without it get a skip; on CI a missing package is an error, so that a broken
    install cannot silently skip whole groups of tests.
    """
    if in_ci():
        return importlib.import_module(module)
    return pytest.importorskip(module)


def golden_case(name: str) -> tuple[dict, dict]:
    return json.loads((GOLDEN / f"{name}.json").read_text()), load_file(str(GOLDEN / f"{name}.safetensors"))


def load_module(name: str, path: Path):
    """The Python file `path` as module `name`, executed once per test session (other test files
    and scripts are not packages, and pytest's importlib mode does not make them importable)."""
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]
