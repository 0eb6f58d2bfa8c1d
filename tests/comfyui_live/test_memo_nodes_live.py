"""The MEMO nodes inside a real ComfyUI: registration, the shipped workflows queued over HTTP on tiny
models, errors as ComfyUI shows them, and the VAE bridge against ComfyUI's own VAE class.

Models: the tiny random MEMO checkpoint, wav2vec2 and emotion2vec, synthetic SCRFD/ArcFace/MDX
ONNX stand-ins (tests/pack_support.py), and a random-weight VAE with the full SD1.5
architecture (ComfyUI's VAELoader only builds that architecture), laid out under the names the
workflows use in the server's models/ folder. Sampling runs at 64x64 with 2 steps.
"""
import importlib.util
import json
import math
import os
import subprocess
import sys

import pytest

import memo_comfy_live as live
from support import need

live.skip_module_unless_comfyui()

pytestmark = pytest.mark.comfyui

import pack_support as S  # tests/ is on the import path (pyproject.toml), so this module loads once

PACK = S.load_pack()
WORKFLOWS = live.REPO_ROOT / "workflows"
FROZEN = live.REPO_ROOT / "tests" / "fixtures" / "workflows_v1"  # as released with the V1 nodes, never regenerated
SECONDS = 1.2
EXPECTED_FRAMES = math.ceil(SECONDS * 30)
SD_VAE = live.SD_VAE_CONFIG


def write_sd_vae(path, seed=0):
    """Random weights, SD1.5 VAE architecture, diffusers key names (ComfyUI converts them on load)."""
    import torch
    from diffusers import AutoencoderKL
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    vae = AutoencoderKL(**SD_VAE)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.half().contiguous() for k, v in vae.state_dict().items()}, str(path))
    return path


@pytest.fixture(scope="module")
def served(comfy, tiny_bundle):
    """The server with the workflows' models and input files in place."""
    need("onnx")
    if not comfy.server.pack_linked:
        pytest.skip("COMFYUI_LINK_PACK=0: the server runs without this pack")
    dirs = comfy.server.dirs()
    S.build_models_dir(dirs["models"], tiny_bundle)
    write_sd_vae(dirs["models"] / "vae" / S.VAE_FILE)
    S.write_png(dirs["input"] / "portrait.png", S.portrait())
    S.write_wav(dirs["input"] / "speech.wav", S.speech_like(SECONDS, 22050), 22050)
    S.write_wav(dirs["input"] / "speech_long.wav", S.noisy_speech(SECONDS + 1.0, 22050), 22050)
    import torch

    S.write_wav(dirs["input"] / "silence.wav", torch.zeros(1, 22050), 22050)
    return comfy


def test_all_memo_nodes_register(served):
    """All 16 nodes come in through the V3 entry, served as declared and as the V1 release served them."""
    assert served.import_failures() == {}, served.server.log_tail(80)
    classes = {cls.GET_SCHEMA().node_id: cls for cls in S.comfy_nodes().node_classes()}
    registered = served.pack_node_names()
    assert registered == set(classes) and len(registered) == 16, served.server.log_tail(80)
    assert "comfy_entrypoint" in (live.REPO_ROOT / "__init__.py").read_text()
    frozen = json.loads((live.REPO_ROOT / "tests" / "fixtures" / "workflows_v1" / "node_declarations_v1.json").read_text())
    info = served.object_info(refresh=True)
    for name, cls in classes.items():
        entry = info[name]
        schema = cls.GET_SCHEMA()
        assert entry["display_name"] == schema.display_name == frozen[name]["display_name"]
        assert entry["category"].startswith("MEMO") and entry["description"] == schema.description
        assert entry["output"] == list(cls.RETURN_TYPES) and entry["output_name"] == list(cls.RETURN_NAMES)
        assert entry["output"][:len(frozen[name]["outputs"])] == frozen[name]["outputs"]
        assert entry["output_node"] == bool(schema.is_output_node) == frozen[name]["output_node"]
        declared = cls.INPUT_TYPES()
        for section in ("required", "optional"):
            # inputs added since the freeze are optional and come after the old ones (saved workflows lack them)
            added = {"MemoSampler": ["cpu_tuning"], "MemoGenerateToFile": ["cpu_tuning"],
                     "MemoModelLoader": ["weight_dtype"]}.get(name, []) if section == "optional" else []
            assert list(entry["input"].get(section, {})) == list(declared.get(section, {}))
            assert list(declared.get(section, {})) == list(frozen[name][section]) + added
    assert info["MemoGenerateToFile"]["output"][-1] == "VIDEO"
    # our objects are custom types, served under their own MEMO_* names
    assert info["MemoSampler"]["input"]["required"]["memo_model"][0] == "MEMO_MODEL"
    assert info["MemoSampler"]["output"][2] == "MEMO_STATE"


def served_choices(entry) -> list:
    """A combo's choices as /object_info serves them: V1 `[choices, {...}]`, V3 `["COMBO", {"options": choices}]`."""
    return entry[0] if isinstance(entry[0], list) else entry[1]["options"]


def test_model_lists_are_filled_from_the_servers_models_folder(served):
    info = served.object_info(refresh=True)
    required = {name: info[name]["input"]["required"] for name in info}
    assert served_choices(required["MemoModelLoader"]["checkpoint"]) == ["memo/memo"]
    assert served_choices(required["MemoAudioEncoderLoader"]["audio_encoder"]) == ["audio_encoders/wav2vec2-base-960h"]
    assert served_choices(required["MemoEmotionModelLoader"]["emotion2vec"]) == ["emotion2vec/emotion2vec_plus_large"]
    assert served_choices(required["MemoFaceModelLoader"]["face_models"])[0] == "memo/memo"
    assert "memo/memo/misc/vocal_separator/Kim_Vocal_2.onnx" in served_choices(required["MemoVocalSeparation"]["model"])
    assert S.VAE_FILE in served_choices(required["VAELoader"]["vae_name"])


def test_core_node_inputs_used_by_the_workflows_match_the_server(served):
    """The hand-copied core node table of tests/test_workflows.py, against the live /object_info."""
    spec = importlib.util.spec_from_file_location("memo_test_workflows", live.REPO_ROOT / "tests" / "test_workflows.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    info = served.object_info()
    for name, table in module.CORE_NODES.items():
        entry = info[name]
        assert list(entry["input"]["required"]) == list(table["required"]), name
        assert list(entry["input"].get("optional", {})) == list(table["optional"]), name
        assert entry["output"] == table["outputs"], name
        for input_name, kind in table["required"].items():
            if isinstance(kind, list):
                served_kind = entry["input"]["required"][input_name]
                choices = served_kind[0] if isinstance(served_kind[0], list) else served_kind[1].get("options")
                assert choices == kind, (name, input_name)  # V3 nodes list a COMBO's choices under "options"


@pytest.mark.parametrize("folder", [WORKFLOWS, FROZEN], ids=["shipped", "frozen_v1"])
@pytest.mark.parametrize("name, video_node, size", [
    ("memo_talking_video", "13", 64),
    ("memo_schedule_paste_back", "13", 128),
    ("memo_long_audio_to_file", "11", 128),
])
def test_shipped_workflow_runs(served, name, video_node, size, folder):
    """The shipped API files, and those saved with the V1 release (frozen, unchanged), run on the V3 nodes."""
    from comfyui_memo.memo_pipeline.video_io import read_video_info

    prompt = S.small(S.json_file(folder / "api" / f"{name}_api.json"))
    entry = served.queue_and_wait(prompt, timeout=600)
    files = served.output_files(entry)
    assert [f["node_id"] for f in files] == [video_node], files
    path = served.local_path(files[0])
    assert path.suffix == ".mp4" and entry["outputs"][video_node]["animated"] == [True]
    info = read_video_info(path)
    assert (info["frames"], info["width"], info["height"]) == (EXPECTED_FRAMES, size, size)
    assert info["fps"] == 30.0 and info["video_codec"] == "h264" and info["audio_codec"] == "aac"
    assert info["audio_duration"] == pytest.approx(SECONDS, abs=0.05)


@pytest.mark.parametrize("name, video_node", [
    ("memo_talking_video", "13"), ("memo_schedule_paste_back", "13"), ("memo_long_audio_to_file", "11")])
def test_shipped_workflow_with_a_1s_cut_has_an_aligned_soundtrack(served, name, video_node):
    """Load Audio gets 2.2 s, MEMO Audio Encode starts at 1 s: the mp4 ComfyUI saves is 1.2 s long and its
    soundtrack is the source from 1 s on (cross-correlation peak at 0 offset against that segment)."""
    prompt = S.small(S.json_file(WORKFLOWS / "api" / f"{name}_api.json"))
    prompt["2"]["inputs"]["audio"] = "speech_long.wav"
    prompt["8"]["inputs"]["start_seconds"] = 1.0
    entry = served.queue_and_wait(prompt, timeout=600)
    files = served.output_files(entry)
    assert [f["node_id"] for f in files] == [video_node], files
    path = served.local_path(files[0])
    source = S.read_audio(served.server.dirs()["input"] / "speech_long.wav")["waveform"][0]
    soundtrack = S.read_audio(path)
    assert soundtrack["waveform"].shape[-1] / soundtrack["sample_rate"] == pytest.approx(SECONDS, abs=0.05)
    lag, correlation = S.soundtrack_alignment(soundtrack, source[:, 22050:], 22050)
    assert abs(lag) < 0.005 and correlation > 0.95, (lag, correlation)
    lag, _ = S.soundtrack_alignment(soundtrack, source, 22050)
    assert lag == pytest.approx(-1.0, abs=0.005)


def test_generate_to_file_video_output_feeds_cores_save_video(served):
    """Generate To File's VIDEO output (appended after its V1 outputs) is a native VIDEO: core's Save Video
    and Get Video Components take it."""
    from comfyui_memo.memo_pipeline.video_io import read_video_info

    prompt = S.small(S.json_file(WORKFLOWS / "api" / "memo_long_audio_to_file_api.json"))
    prompt["11"]["inputs"]["filename_prefix"] = "MEMO/native_video"
    prompt["90"] = {"class_type": "SaveVideo", "inputs": {"video": ["11", 3], "filename_prefix": "MEMO/saved_by_core",
                                                            "format": "auto", "codec": "auto"}}
    prompt["91"] = {"class_type": "GetVideoComponents", "inputs": {"video": ["11", 3]}}
    prompt["92"] = {"class_type": "PreviewImage", "inputs": {"images": ["91", 0]}}
    entry = served.queue_and_wait(prompt, timeout=600)
    by_node = {f["node_id"]: f for f in served.output_files(entry) if f["filename"].endswith(".mp4")}
    assert set(by_node) == {"11", "90"}, entry.get("outputs")
    ours, core = (read_video_info(served.local_path(by_node[n])) for n in ("11", "90"))
    assert core["frames"] == ours["frames"] == EXPECTED_FRAMES and (core["width"], core["height"]) == (128, 128)
    assert core["audio_codec"] is not None
    assert len(entry["outputs"]["92"]["images"]) == EXPECTED_FRAMES  # the frames, decoded by core from our file


def test_cpu_run_logs_how_long_it_will_take(served):
    """The server runs with --cpu: the sampler's estimate is in ComfyUI's log after a run."""
    prompt = S.small(S.json_file(WORKFLOWS / "api" / "memo_talking_video_api.json"))
    prompt["11"]["inputs"]["seed"] = 1234  # a new prompt, not a cached one
    served.queue_and_wait(prompt, timeout=600)
    log = served.server.log_text()
    assert "MEMO sampler on the CPU: the first step took" in log and "will take roughly" in log, \
        served.server.log_tail(40)


def test_readme_queue_command_runs_against_the_server(served, tmp_path):
    """The README's queue_workflow.py command, verbatim, from a folder holding the files it names (only the
    CI sampling size appended): uploads, runs the shipped workflow, downloads the video."""
    import re
    import shlex

    readme = (live.REPO_ROOT / "README.md").read_text()
    commands = re.findall(r"`(python3? scripts/queue_workflow\.py [^`]*)`", readme)
    (command,) = [c for c in commands if "--jobs" not in c]  # the --jobs example is run by test_queue_script
    argv = shlex.split(command)
    (tmp_path / "workflows").symlink_to(WORKFLOWS)
    (tmp_path / "scripts").symlink_to(live.REPO_ROOT / "scripts")
    uploads = [t.partition("=@")[2] for t in argv if "=@" in t]
    assert len(uploads) == 2
    for name in uploads:
        if name.endswith(".png"):
            S.write_png(tmp_path / name, S.portrait())
        else:
            S.write_wav(tmp_path / name, S.speech_like(SECONDS, 22050), 22050)
    env = {**os.environ, "COMFYUI_URL": served.url}
    proc = subprocess.run([sys.executable, *argv[1:], "--set", "11.steps=2", "--set", "11.resolution=64"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    videos = list((tmp_path / argv[argv.index("--out") + 1]).rglob("*.mp4"))
    assert len(videos) == 1 and "uploaded" in proc.stderr


def test_bad_input_is_reported_by_comfyui_with_our_message(served):
    prompt = S.small(S.json_file(WORKFLOWS / "api" / "memo_talking_video_api.json"))
    prompt["8"]["inputs"]["start_seconds"] = 100.0  # past the end of the 1.2 s speech
    with pytest.raises(live.ComfyError) as caught:
        served.queue_and_wait(prompt, timeout=300)
    message = str(caught.value)
    assert "MemoAudioEncode" in message and "start_seconds 100 is past the end" in message


def test_unknown_model_name_is_rejected_at_queue_time(served):
    prompt = S.small(S.json_file(WORKFLOWS / "api" / "memo_talking_video_api.json"))
    prompt["4"]["inputs"]["checkpoint"] = "memo/not-there"
    with pytest.raises(live.ComfyError) as caught:
        served.queue(prompt)
    assert "value_not_in_list" in json.dumps(caught.value.payload)


def test_cancel_stops_the_sampler_between_steps(served):
    """POST /interrupt while MEMO Sampler runs 3 x 200 steps: it stops within a few steps, at the sampler."""
    import time

    prompt = S.small(S.json_file(WORKFLOWS / "api" / "memo_talking_video_api.json"))
    prompt["11"]["inputs"]["steps"] = 200
    prompt_id = served.queue(prompt)
    deadline = time.monotonic() + 120
    while not served.get_json("/queue")["queue_running"]:
        assert time.monotonic() < deadline, "the prompt never started"
        time.sleep(0.2)
    time.sleep(8)  # loaders, audio and emotion take a few seconds; then the sampler runs for minutes
    served.post_json("/interrupt", {})
    stopped = time.monotonic()
    with pytest.raises(live.ComfyError) as caught:
        served.wait(prompt_id, timeout=60)
    assert time.monotonic() - stopped < 30
    assert "prompt interrupted at node 11" in str(caught.value)


PROBE = r'''
import folder_paths
from memo_probe_pack.nodes import vae_bridge
import asyncio
extension = asyncio.run(pack.comfy_entrypoint())
node_classes = asyncio.run(extension.get_node_list())
from memo_probe_pack.memo_pipeline.vae import DiffusersVAE
from diffusers import AutoencoderKL
torch.manual_seed(0)
dvae = AutoencoderKL(**config).eval()
cvae = comfy.sd.VAE(sd={k: v.clone() for k, v in dvae.state_dict().items()})
bridge, ref = vae_bridge.ComfyVAEBridge(cvae), DiffusersVAE(dvae)
frames = torch.rand(2, 3, 64, 64) * 2 - 1
with torch.inference_mode():
    ours, theirs = bridge.encode(frames), ref.encode(frames)
    back_ours, back_theirs = bridge.decode(theirs), ref.decode(theirs)
print("PROBE " + json.dumps({
    "host": extension.host.name, "bound": all(cls.HOST is extension.host for cls in node_classes),
    "encode_shape": list(ours.shape), "encode_diff": float((ours - theirs).abs().max()),
    "decode_shape": list(back_ours.shape), "decode_diff": float((back_ours - back_theirs).abs().max()),
    "latent_std": float(theirs.std()), "nodes": len(node_classes)}))
'''


def test_vae_bridge_on_comfyuis_own_vae_class(tmp_path):
    report = live.run_pack_probe(PROBE, SD_VAE, tmp_path)
    assert report["host"] == "comfyui" and report["bound"] and report["nodes"] == 16
    assert report["encode_shape"] == [2, 4, 8, 8] and report["decode_shape"] == [2, 3, 64, 64]
    assert report["latent_std"] > 1e-3
    assert report["encode_diff"] < 1e-4, report
    assert report["decode_diff"] < 1e-4, report
