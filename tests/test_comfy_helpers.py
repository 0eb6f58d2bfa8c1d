"""nodes/comfy_helpers.py (no ComfyUI needed) and the adapter's import guard."""
import importlib
import importlib.util
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from support import need

NODES_DIR = Path(__file__).resolve().parents[1] / "nodes"


def _load_helpers():
    spec = importlib.util.spec_from_file_location("memo_test_comfy_helpers", NODES_DIR / "comfy_helpers.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


h = _load_helpers()


def _ckpt(root, rel):
    d = root / rel / "diffusion_net"
    d.mkdir(parents=True)
    (d / "config.json").write_text("{}")


def test_find_model_dirs_lists_marked_folders_across_roots(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    _ckpt(a, "memo")
    _ckpt(a, "org/memo-v2")
    _ckpt(b, "Another")
    (a / "half" / "reference_net").mkdir(parents=True)      # no marker
    _ckpt(a, "x/y/too-deep")                                  # deeper than 2 levels
    _ckpt(a, ".hidden")
    (a / "memo.safetensors").write_text("file, not folder")
    assert h.find_model_dirs([str(a), str(b), str(tmp_path / "missing")], h.MEMO_MARKER) == [
        "Another", "memo", "org/memo-v2"]


def test_find_model_dirs_does_not_descend_into_a_checkpoint(tmp_path):
    _ckpt(tmp_path, "outer")
    _ckpt(tmp_path, "outer/inner")
    assert h.find_model_dirs([str(tmp_path)], h.MEMO_MARKER) == ["outer"]


def test_find_model_dirs_follows_symlinked_folders(tmp_path):
    _ckpt(tmp_path / "store", "real")
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "linked").symlink_to(tmp_path / "store" / "real", target_is_directory=True)
    assert h.find_model_dirs([str(tmp_path / "models")], h.MEMO_MARKER) == ["linked"]


@pytest.mark.parametrize("bad", ["../x", "a/../../x", "/etc/passwd", "", "  "])
def test_safe_join_refuses_escapes(tmp_path, bad):
    with pytest.raises(ValueError):
        h.safe_join(str(tmp_path), bad)


def test_safe_join_allows_nested_names(tmp_path):
    assert h.safe_join(str(tmp_path), "org/model") == str(tmp_path / "org" / "model")
    assert h.safe_join(str(tmp_path), "a/../b") == str(tmp_path / "b")


def test_resolve_in_roots_prefers_first_root_and_checks_kind(tmp_path):
    r1, r2 = tmp_path / "r1", tmp_path / "r2"
    (r1 / "m").mkdir(parents=True)
    (r2 / "m").mkdir(parents=True)
    (r2 / "f.onnx").write_bytes(b"x")
    assert h.resolve_in_roots([str(r1), str(r2)], "m", "dir") == str(r1 / "m")
    assert h.resolve_in_roots([str(r1), str(r2)], "f.onnx", "file") == str(r2 / "f.onnx")
    with pytest.raises(FileNotFoundError, match="folder 'f.onnx' not found in: .*r1, .*r2"):
        h.resolve_in_roots([str(r1), str(r2)], "f.onnx", "dir")
    with pytest.raises(ValueError):
        h.resolve_in_roots([str(r1)], "m", "folder")


def test_to_preview_pil_converts_float_tensor_frames():
    torch = need("torch")
    frame = torch.zeros(4, 6, 3)
    frame[0, 0] = torch.tensor([1.0, 0.5, 0.0])
    frame[3, 5] = torch.tensor([2.0, -1.0, 0.25])  # clipped to 0..1
    pil = h.to_preview_pil(frame)
    assert pil.size == (6, 4) and pil.mode == "RGB"
    assert pil.getpixel((0, 0)) == (255, 128, 0)
    assert pil.getpixel((5, 3)) == (255, 0, 64)
    assert h.to_preview_pil(frame[None]).size == (6, 4)


def test_to_preview_pil_handles_uint8_gray_rgba_and_limits_size():
    from PIL import Image
    gray = np.full((10, 20), 7, dtype=np.uint8)
    assert h.to_preview_pil(gray).getpixel((0, 0)) == (7, 7, 7)
    rgba = np.zeros((2, 2, 4), dtype=np.uint8)
    rgba[..., 1] = 200
    assert h.to_preview_pil(rgba).getpixel((1, 1)) == (0, 200, 0)
    big = Image.new("RGB", (1000, 500))
    assert h.to_preview_pil(big, max_side=100).size == (100, 50)
    assert big.size == (1000, 500)


@pytest.mark.parametrize("shape", [(2, 4, 4, 3), (4, 4, 2), (3,)])
def test_to_preview_pil_rejects_bad_shapes(shape):
    with pytest.raises(ValueError):
        h.to_preview_pil(np.zeros(shape, dtype=np.float32))


def test_adapter_import_outside_comfyui_says_why(monkeypatch):
    for name in ("folder_paths", "comfy"):
        if importlib.util.find_spec(name) is not None:
            pytest.skip(f"'{name}' is importable here, so this is not an outside-ComfyUI environment")
    pkg = types.ModuleType("memo_guard_nodes")
    pkg.__path__ = [str(NODES_DIR)]
    monkeypatch.setitem(sys.modules, "memo_guard_nodes", pkg)
    with pytest.raises(ImportError, match="only works inside a running ComfyUI"):
        importlib.import_module("memo_guard_nodes.comfy_adapter")
