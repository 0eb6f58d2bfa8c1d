"""nodes/comfy_adapter.py against the real ComfyUI modules, and the VAE facts our notes rely on.

Each check runs adapter_probe.py in ComfyUI's interpreter (the adapter cannot import in
ours) and asserts on the JSON report it prints.
"""
import json
import os
import subprocess
from pathlib import Path

import pytest

import memo_comfy_live as live

live.skip_module_unless_comfyui()

pytestmark = pytest.mark.comfyui

PROBE = Path(__file__).with_name("adapter_probe.py")


def run_probe(mode, base_dir, timeout=300):
    comfy_dir = live.comfyui_path()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([str(live.comfyui_python(comfy_dir)), str(PROBE), str(comfy_dir), str(live.REPO_ROOT),
                           str(base_dir), mode], cwd=base_dir, env=env, capture_output=True, text=True,
                          timeout=timeout)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("PROBE-REPORT ")]
    assert lines, f"probe printed no report (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    report = json.loads(lines[-1][len("PROBE-REPORT "):])
    assert "error" not in report, report.get("error")
    return report


@pytest.fixture(scope="module")
def adapter_report(tmp_path_factory):
    return run_probe("adapter", tmp_path_factory.mktemp("adapter_base"))


def test_model_folders_registered_under_models(adapter_report):
    folders = adapter_report["folders"]
    assert set(folders) >= {"memo", "audio_encoders", "emotion2vec", "insightface"}
    for name, (paths, _exts) in folders.items():
        assert paths[0].endswith(os.path.join("models", name)), (name, paths)
    assert ".onnx" in folders["insightface"][1]
    assert ".safetensors" in folders["audio_encoders"][1]  # ComfyUI's own registration kept
    assert adapter_report["audio_encoders_kept_core_paths"] is True


def test_memo_checkpoints_are_folders_with_marker(adapter_report):
    assert adapter_report["checkpoints"] == ["memo-a", "org/memo-c"]
    assert adapter_report["resolved"].endswith(os.path.join("models", "memo", "memo-a"))
    assert adapter_report["missing"].startswith("FileNotFoundError")
    assert adapter_report["escape"].startswith("ValueError")


def test_progress_reaches_comfyui_hook_with_preview_tuple(adapter_report):
    assert adapter_report["progress_calls"] == [
        [1, 3, None],
        [2, 3, ["JPEG", "Image", [24, 16], 512]],
        [3, 3, None],
    ]


def test_interrupt_and_devices(adapter_report):
    assert adapter_report["interrupt"] == "raised"
    assert adapter_report["devices"] == ["cpu", "cpu", "cpu"]
    assert adapter_report["dtypes"][0] == "torch.float32"


def test_diffusers_and_transformers_modules_load_through_model_management(adapter_report):
    assert adapter_report["loaded_added"] == 2  # second load of the same module is not re-added
    assert adapter_report["is_loaded"] == [True, True]
    assert adapter_report["w2v_runs"] == [1, 39, 16]
    assert adapter_report["unloaded"] == 1
    assert adapter_report["is_loaded_after"] == [False, True]
    assert adapter_report["vae_param_device"] == "cpu"


def test_save_path_numbers_files_like_core_savers(adapter_report):
    assert adapter_report["save_path"] == [os.path.join("output", "memo"), "clip", 1, "memo"]
    assert adapter_report["output_dir"] == "output"


@pytest.mark.slow
def test_comfy_vae_encode_is_unscaled_posterior_mean(tmp_path):
    """Pins docs/comfyui_notes.md: VAE.encode == diffusers latent_dist.mode(), no 0.18215."""
    r = run_probe("vae", tmp_path)
    assert r["latent_shape"] == [2, 4, 8, 8]
    assert r["encode_vs_mode_maxdiff"] < 1e-4
    assert r["encode_vs_scaled_mode_maxdiff"] > 0.1
    assert r["posterior_std_mean"] > 0.1  # so mean vs sample would have been distinguishable
    assert r["decode_shape"] == [2, 64, 64, 3]
    assert r["decode_vs_diffusers_maxdiff"] < 1e-4
    assert r["first_stage_class"] == "comfy.ldm.models.autoencoder.AutoencoderKL"
    assert r["has_diffusers_keys"] is False


def test_video_values_round_trip_through_core_types(adapter_report):
    assert adapter_report["video_parts"] == [[5, 32, 48, 3], 16000, 10.0, True]
    assert adapter_report["video_file_parts"] == [[5, 32, 48, 3], 16000, 10.0]
    assert adapter_report["video_bad_shape"].startswith("video frames must be [T,H,W,3]")
