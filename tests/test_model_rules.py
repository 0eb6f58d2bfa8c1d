"""One rule set for model files: for every tree in `model_trees.TREES`, what `models check` says
about each core item equals whether the loader `generate` uses really loads it."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from memo_pipeline import model_files as mf
from model_trees import TREES, loopback_only, write_release_tree  # noqa: F401 - autouse fixture

from support import need  # noqa: E402

need("onnx")

CORE = [item for item in mf.ITEMS if item.kind in ("memo", "vae", "wav2vec2")]


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> Path:
    return write_release_tree(tmp_path_factory.mktemp("release") / "models")


def load_with_the_loader(item: mf.Item, path: Path) -> str | None:
    """None when the run-time loader loads `path`, else the loader's error."""
    from memo_pipeline.audio.wav2vec2_weights import load_wav2vec2
    from memo_pipeline.loading import COMPONENTS, load_component
    from memo_pipeline.vae import DiffusersVAE

    try:
        if item.kind == "memo":
            load_component(path, COMPONENTS[item.component][1])
        elif item.kind == "vae":
            DiffusersVAE.from_pretrained(path)
        else:
            load_wav2vec2(path)
    except (ValueError, OSError) as err:
        return f"{type(err).__name__}: {err}"
    return None


@pytest.mark.parametrize("name", list(TREES))
def test_check_verdict_equals_loader_success(name, release, tmp_path):
    models = Path(shutil.copytree(release, tmp_path / "models"))
    TREES[name](models)
    for item in CORE:
        started = time.monotonic()
        status = mf.check_item(item, models)
        assert time.monotonic() - started < 5, f"{item.key}: check took too long"
        path = status.path if status.path is not None else models / item.dest
        error = load_with_the_loader(item, path)
        assert status.ok == (error is None), f"{name} / {item.key}: check {status.status} ({status.detail}), loader: {error}"
        if not status.ok:  # a reason in words: never a library's exception text
            assert status.detail and "list index out of range" not in status.detail and "Error while" not in status.detail


EXPECTED = {  # tree -> (item, what both sides must say)
    "vae file with diffusers names": ("vae", "found"),
    "vae file with diffusers names, old attention names": ("vae", "found"),
    "vae file with a vae. prefix and loss./model_ema. keys": ("vae", "found"),
    "vae folder with model.safetensors": ("vae", "found"),
    "vae folder asking for 2000 layers per block": ("vae", "unusable"),
    "vae file with overlapping tensors": ("vae", "unusable"),
    "vae file with a deeply nested header": ("vae", "unusable"),
    "memo weights with overlapping tensors": ("diffusion_net", "unusable"),
    "memo weights with a deeply nested header": ("diffusion_net", "unusable"),
    "memo weights path is a folder": ("diffusion_net", "unusable"),
    "memo config.json is a folder": ("image_proj", "unusable"),
    "memo config asking for 2000 layers per block": ("reference_net", "unusable"),
    "memo weights sharded": ("audio_proj", "found"),
    "wav2vec2 folder with pytorch_model.bin": ("wav2vec2", "found"),
    "wav2vec2 single file in audio_encoders": ("wav2vec2", "found"),
    "wav2vec2 config asking for 2000 layers": ("wav2vec2", "unusable"),
    "wav2vec2 weights with overlapping tensors": ("wav2vec2", "unusable"),
}


@pytest.mark.parametrize("name", list(EXPECTED))
def test_the_trees_verdicts(name, release, tmp_path):
    models = Path(shutil.copytree(release, tmp_path / "models"))
    TREES[name](models)
    key, expected = EXPECTED[name]
    status = mf.check_item(mf.ITEMS_BY_KEY[key], models)
    assert status.status == expected, status.detail
