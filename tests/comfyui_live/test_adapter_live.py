"""The pack's ComfyUI host (nodes/comfy_adapter.py) against the real ComfyUI modules, per-network
model management, previews through ComfyUI's previewer, and the VAE facts our notes rely on.

Each check runs adapter_probe.py in ComfyUI's interpreter (the host cannot import in ours) and
asserts on the JSON report it prints.
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


def run_probe(mode, base_dir, extra=None, timeout=600):
    comfy_dir = live.comfyui_path()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    (Path(base_dir) / "custom_nodes").mkdir(exist_ok=True)
    command = [str(live.comfyui_python(comfy_dir)), str(PROBE), str(comfy_dir), str(live.REPO_ROOT), str(base_dir), mode]
    if extra is not None:
        command.append(json.dumps(extra))
    proc = subprocess.run(command, cwd=base_dir, env=env, capture_output=True, text=True, timeout=timeout)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("PROBE-REPORT ")]
    assert lines, f"probe printed no report (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    report = json.loads(lines[-1][len("PROBE-REPORT "):])
    assert "error" not in report, report.get("error")
    return report


@pytest.fixture(scope="module")
def adapter_report(tmp_path_factory):
    return run_probe("adapter", tmp_path_factory.mktemp("adapter_base"))


def test_the_pack_runs_on_comfyui_host_inside_comfyui(adapter_report):
    assert adapter_report["host"] == ["ComfyHost", "comfyui", True]


def test_model_folders_registered_under_models(adapter_report):
    folders = adapter_report["folders"]
    assert set(folders) >= {"memo", "audio_encoders", "emotion2vec", "insightface"}
    for name, (paths, _exts) in folders.items():
        assert paths[0].endswith(os.path.join("models", name)), (name, paths)
    assert ".onnx" in folders["insightface"][1]
    assert ".safetensors" in folders["audio_encoders"][1]  # ComfyUI's own registration kept
    assert adapter_report["audio_encoders_kept_core_paths"] is True


def test_model_lists_and_paths(adapter_report):
    assert adapter_report["checkpoints"] == ["memo-a", "org/memo-c"]
    assert adapter_report["onnx_files"] == ["Kim_Vocal_2.onnx", "sub/other.ONNX"]
    assert adapter_report["unregistered_roots"] == []
    assert adapter_report["resolved"].endswith(os.path.join("models", "memo", "memo-a"))
    assert adapter_report["missing"].startswith("HostError: file or folder 'nope' not found in:")
    assert "press R in the editor" in adapter_report["missing"]
    assert adapter_report["escape"].startswith("ValueError")


def test_progress_and_previews_follow_the_preview_method(adapter_report):
    calls = adapter_report["progress_calls"]
    frame, latent = ["JPEG", "Image", [24, 16], 512], ["JPEG", "Image", [12, 8], 512]
    assert calls["none"] == [[1, 3, None], [2, 3, None], [3, 3, None], [3, 3, None]]  # none: no preview at all
    assert calls["latent2rgb"] == [[1, 3, None], [2, 3, frame], [3, 3, latent], [3, 3, None]]
    # taesd without models/vae_approx/taesd_decoder falls back to latent2rgb, as ComfyUI's samplers do
    assert calls["taesd"] == calls["latent2rgb"]
    assert adapter_report["latent2rgb_previewer"] == "Latent2RGBPreviewer"
    assert adapter_report["latent2rgb_matches_core"] is True
    assert adapter_report["taesd_previewer"] == "TAESDPreviewerImpl"
    assert adapter_report["taesd_call"] == [1, 1, ["JPEG", "Image", [96, 64], 512]]  # TAESD decodes 8x up
    assert adapter_report["default_preview_method"] == "LatentPreviewMethod.NoPreviews"


def test_interrupt_and_devices(adapter_report):
    assert adapter_report["interrupt"] == "raised"
    assert adapter_report["devices"] == ["cpu", "cpu", "cpu"]
    assert adapter_report["dtypes"] == ["torch.float32", "torch.float32"]  # --cpu: no bf16 for the MEMO nets


def test_diffusers_and_transformers_modules_load_through_model_management(adapter_report):
    assert adapter_report["loaded_added"] == 2  # second load of the same module is not re-added
    assert adapter_report["patchers"] == [True, True, True]  # one patcher per module, reused
    assert adapter_report["is_loaded"] == [True, True]
    assert adapter_report["w2v_runs"] == [1, 39, 16]
    assert adapter_report["unloaded"] == 1
    assert adapter_report["is_loaded_after"] == [False, True]
    assert adapter_report["vae_param_device"] == "cpu"


def test_save_path_numbers_files_like_core_savers(adapter_report):
    assert adapter_report["save_path"] == [os.path.join("output", "memo"), "clip", 1, "memo"]
    assert adapter_report["output_dir"] == "output"


def test_each_network_is_its_own_model_loaded_right_before_it_runs(tmp_path, tiny_bundle):
    r = run_probe("vram", tmp_path, {name: str(path) for name, path in tiny_bundle.items()})
    assert r["dtype"] == "fp32"  # 'auto' on a CPU ComfyUI
    assert all(r["own_patchers"].values()) and len(r["own_patchers"]) == 7
    assert r["distinct_patchers"] == 7  # 4 MEMO networks, wav2vec2, emotion2vec, emotion classifier
    assert r["audio_requests"] == [["audio_encoder"]]
    assert r["emotion_requests"] == [["emotion2vec", "emotion_classifier"]]  # they alternate window by window
    requests = r["sampler_requests"]
    assert all(len(request) == 1 for request in requests), requests  # one model per load, never all at once
    flat = [request[0] for request in requests]
    assert set(flat) == {"image_proj", "reference_net", "audio_proj", "diffusion_net", "vae"}
    assert flat.count("diffusion_net") == r["clips"] * 2  # before every step
    assert flat.count("audio_proj") == r["clips"]
    for clip_start in [i for i, name in enumerate(flat) if name == "audio_proj"]:
        assert flat[clip_start - 1] == "reference_net" and flat[clip_start + 1] == "diffusion_net"
    assert r["loaded_after_run"] == ["audio_proj", "diffusion_net", "image_proj", "reference_net", "vae"]
    assert r["loaded_after_free"] == []  # every idle network can be offloaded
    assert r["loaded_after_one"] == ["reference_net"]  # loading one network loads only that one
    assert r["rerun_max_diff"] == 0.0 and r["frames"] == [8, 64, 64, 3]  # and they come back on demand


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


@pytest.fixture(scope="module")
def partial_report(tmp_path_factory, tiny_bundle):
    extra = {name: str(path) for name, path in tiny_bundle.items()}
    extra["fraction"] = 0.4
    return run_probe("partial", tmp_path_factory.mktemp("partial_base"), extra)


def test_partial_load_streams_layers_and_equals_a_full_load(partial_report):
    """ComfyUI's ModelPatcher loads 40 % of each MEMO network (the rest streams through comfy.ops' cast
    forward): the sampler's frames are bit-identical to a full load's. This ComfyUI runs on the CPU,
    so the load and offload devices are both the CPU (see check_partial in adapter_probe.py)."""
    r = partial_report
    assert r["layer_classes"] == sorted(f"comfy.ops.disable_weight_init.{name}"
                                        for name in ("Conv2d", "GroupNorm", "LayerNorm", "Linear")), r["layer_classes"]
    # the tensors no comfy.ops layer holds (emotion embedding tables, temporal position tables) are placed by us
    assert r["unmanaged"] == {"moved": 30, "on_meta": ["pe", "weight"], "cast_layers_kept": True}, r["unmanaged"]
    assert r["full_lowvram"] == [False] * 4
    assert r["plain_layer_classes"] == []  # (the loader without host layer classes: plain torch layers)
    assert r["comfy_ops_vs_plain_layers"] == 0.0  # the default output is unchanged by the comfy.ops layers
    for name in ("reference_net", "diffusion_net"):
        net = r["partial"][name]
        assert net["lowvram"] and 0 < net["loaded_size"] < net["model_size"], (name, net)
        assert 0 < net["streamed"] < net["layers"] and net["streamed_on_offload"], (name, net)
    assert r["partial_vs_full"] == 0.0 and r["frames"] == [4, 64, 64, 3]
    assert r["after_unload"] == {name: [0, False] for name in r["partial"]}  # plain forward again
    print("partial load with streamed layers left untuned (before): max abs diff",
          r["partial_untuned_streamed_vs_full"], "; sampler runs (s):", r["sampler_seconds"])


def test_fp8_weights_through_the_model_loader_run_the_sampler(partial_report):
    r = partial_report
    assert r["fp8_layer_classes"] == ["manual_cast.Conv2d", "manual_cast.GroupNorm", "manual_cast.LayerNorm",
                                      "manual_cast.Linear"]
    assert r["fp8_weight_dtypes"] == ["torch.float32", "torch.float8_e4m3fn"]  # normalisations keep fp32
    assert r["fp8_model"] == ["fp8_e4m3fn", "fp32"]
    assert r["fp8_finite"] and r["fp8_vs_fp32"] > 0
    assert r["fp8_comfy_vs_library"] == 0.0  # ComfyUI's manual_cast == the library's casting layers, bit for bit
    assert r["fp8_partial"] == [True, True] and r["fp8_partial_vs_full"] == 0.0
