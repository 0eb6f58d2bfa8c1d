"""Properties of the project as a whole: import boundaries, dependency lists, test-harness rules."""

from __future__ import annotations

import ast
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

import support

REPO = Path(__file__).resolve().parents[1]
COMFY_MODULES = ("nodes", "comfy", "comfy_extras", "comfy_api", "comfy_execution", "folder_paths", "server",
                 "execution", "latent_preview", "node_helpers", "comfyui_memo")


def _top_level_imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
        elif isinstance(node, ast.ImportFrom) and node.level > 0 and node.module:
            # `from ..nodes import x` inside memo_pipeline would climb out of the library
            depth = len(path.relative_to(REPO / "memo_pipeline").parts) - 1
            if node.level > depth:
                names.add(node.module.split(".")[0])
    return names


def test_memo_pipeline_source_never_names_nodes_or_comfyui():
    offenders = {}
    for path in sorted((REPO / "memo_pipeline").rglob("*.py")):
        found = _top_level_imports(path) & set(COMFY_MODULES)
        if found:
            offenders[str(path.relative_to(REPO))] = sorted(found)
    assert offenders == {}


@pytest.mark.slow  # a fresh interpreter importing torch, diffusers and transformers
def test_importing_every_memo_pipeline_module_loads_no_comfyui_module():
    """Run in a fresh interpreter from the repository root, where `nodes` (ours) would be importable."""
    script = f"""
import importlib, pkgutil, sys
import memo_pipeline
names = [m.name for m in pkgutil.walk_packages(memo_pipeline.__path__, "memo_pipeline.")
         if not m.name.endswith("__main__")]
for name in names:
    importlib.import_module(name)
bad = sorted(m for m in sys.modules if m.split(".")[0] in {COMFY_MODULES!r})
print(len(names), bad)
"""
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    count, bad = done.stdout.strip().split(" ", 1)
    assert int(count) > 30 and bad == "[]"


def test_need_skips_for_developers_and_fails_on_ci(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception):
        support.need("memo_no_such_package")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(ModuleNotFoundError):
        support.need("memo_no_such_package")
    assert support.need("json") is sys.modules["json"]


def _live_harness():
    spec = importlib.util.spec_from_file_location("memo_comfy_live_for_test", REPO / "tests" / "comfyui_live" / "memo_comfy_live.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_live_tests_skip_without_comfyui_path_and_fail_with_a_broken_one(monkeypatch, tmp_path):
    live = _live_harness()
    monkeypatch.delenv("COMFYUI_PATH", raising=False)
    with pytest.raises(pytest.skip.Exception, match="COMFYUI_PATH is not set"):
        live.skip_module_unless_comfyui()
    monkeypatch.setenv("COMFYUI_PATH", str(tmp_path))  # set, but no ComfyUI there
    with pytest.raises(pytest.fail.Exception, match="does not contain ComfyUI"):
        live.skip_module_unless_comfyui()
    (tmp_path / "main.py").write_text("")
    (tmp_path / "comfy").mkdir()
    monkeypatch.setenv("COMFYUI_PYTHON", str(tmp_path / "venv" / "bin" / "python"))  # a ComfyUI without its Python
    with pytest.raises(pytest.fail.Exception, match="no Python for the ComfyUI"):
        live.skip_module_unless_comfyui()


def _pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib")  # standard library from Python 3.11 on
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def _requirements(path: Path) -> dict[str, str]:
    lines = [line.split("#", 1)[0].strip() for line in path.read_text().splitlines()]
    return _by_name(line for line in lines if line)


def _by_name(specs) -> dict[str, str]:
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    parsed = [Requirement(spec) for spec in specs]
    return {canonicalize_name(r.name): f"{r.specifier}{';' + str(r.marker) if r.marker else ''}" for r in parsed}


def test_requirement_files_and_pyproject_declare_the_same_dependencies():
    project = _pyproject()["project"]
    assert _requirements(REPO / "requirements.txt") == _by_name(project["dependencies"])
    assert _requirements(REPO / "requirements-test.txt") == _by_name(project["optional-dependencies"]["test"])
    assert _requirements(REPO / "requirements-cluster.txt") == _by_name(project["optional-dependencies"]["cluster"])
    assert "ray" not in _by_name(project["dependencies"])  # an extra: ComfyUI installs never pull Ray in
    declared = set(_by_name(project["dependencies"]))
    assert not declared & {"torchvision", "torchaudio", "funasr", "insightface", "moviepy"}


def test_registry_metadata_is_complete_and_valid():
    data = _pyproject()
    project, comfy = data["project"], data["tool"]["comfy"]
    assert set(comfy) >= {"PublisherId", "DisplayName", "Icon", "includes"}
    assert comfy["DisplayName"].strip()
    assert isinstance(comfy["includes"], list) and all((REPO / path).exists() for path in comfy["includes"])
    import re

    assert re.fullmatch(r">=\d+\.\d+\.\d+", comfy["requires-comfyui"])
    assert re.fullmatch(r"\d+\.\d+\.\d+", project["version"])
    assert re.fullmatch(r"[A-Za-z][A-Za-z0-9]*(?:[-_.][A-Za-z0-9]+)*", project["name"]) and len(project["name"]) < 100
    assert project["license"] == {"text": "Apache-2.0"}


@pytest.mark.slow  # builds a wheel and a virtual environment
def test_wheel_holds_the_library_and_imports_outside_the_checkout(tmp_path):
    """`pip wheel .` works and the installed wheel gives `import memo_pipeline`, not the node pack."""
    import shutil
    import zipfile

    source = tmp_path / "src"  # a copy, so the in-tree build folders do not land in the checkout
    shutil.copytree(REPO / "memo_pipeline", source / "memo_pipeline", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation",
                            "-w", str(tmp_path / "dist")], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert build.returncode == 0, build.stdout[-2000:] + build.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    tops = {name.split("/")[0] for name in zipfile.ZipFile(wheel).namelist()}
    assert tops == {"memo_pipeline", wheel.name.split("-")[0] + "-" + wheel.name.split("-")[1] + ".dist-info"}
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
                   check=True, timeout=300, capture_output=True)
    probe = subprocess.run([str(python), "-c", "import memo_pipeline.pipeline, memo_pipeline; print(memo_pipeline.__file__)"],
                           capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert probe.returncode == 0, probe.stderr[-2000:]
    assert str(venv) in probe.stdout and str(REPO) not in probe.stdout
