"""The ComfyUI nodes, without ComfyUI: declarations vs. behaviour, loaders, audio/emotion/face nodes,
the VAE bridge, previews, the sampler (progress, cancel, resume) and the streaming writer.

Everything runs on tiny random checkpoints at 64x64 with a few steps; the pack is imported the
way ComfyUI imports it (see pack_support.load_pack) and runs on a StandaloneHost whose model
roots point at a temporary models/ folder.
"""

import inspect
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import pack_support as S  # tests/ is on the import path (pyproject.toml), so this module loads once
from support import need

PACK = S.load_pack()
from comfyui_memo.memo_pipeline.pipeline import GenerationCancelled  # noqa: E402
from comfyui_memo.memo_pipeline.vae import DiffusersVAE  # noqa: E402
from comfyui_memo.memo_pipeline.video_io import read_video_info  # noqa: E402
from comfyui_memo.nodes import IMPLEMENTATIONS, common, host, implementation, memo_types, preview, vae_bridge  # noqa: E402

NODES = {name: cls for name, (cls, _method) in IMPLEMENTATIONS.items()}  # the classes doing the work
NATIVE_TYPES = {"IMAGE", "AUDIO", "VAE", "INT", "FLOAT", "STRING", "BOOLEAN", "COMBO", "VIDEO"}
HAAR = "opencv-haar (crop only, no identity)"


def run(node_name, *args, **kwargs):
    out = implementation(node_name)(*args, **kwargs)
    return out["result"] if isinstance(out, dict) else out


def v3_classes(bound_host=None) -> dict:
    """The V3 node classes (ComfyUI's real comfy_api from COMFYUI_PATH; skip without one), bound to `bound_host`."""
    return {cls.GET_SCHEMA().node_id: cls for cls in S.comfy_nodes().node_classes(bound_host)}


def combo_options(node_name, input_name, bound_host=None) -> list:
    """A combo's options as ComfyUI lists them (through the V3 schema)."""
    kind, options = v3_classes(bound_host)[node_name].INPUT_TYPES()["required"][input_name]
    assert kind == "COMBO"
    return options["options"]


# ----------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def models_root(tmp_path_factory, tiny_bundle):
    need("onnx")
    return S.build_models_dir(tmp_path_factory.mktemp("models"), tiny_bundle)


@pytest.fixture
def memo_host(models_root, tmp_path):
    with host.use_host(host.StandaloneHost(models_root, output_dir=tmp_path / "output")) as h:
        yield h


@pytest.fixture(scope="module")
def loaded(models_root):
    with host.use_host(host.StandaloneHost(models_root)):
        (model,) = run("MemoModelLoader", "memo/memo", "fp32", "sdpa")
        (encoder,) = run("MemoAudioEncoderLoader", "audio_encoders/wav2vec2-base-960h", "fp32")
        (emotion_model,) = run("MemoEmotionModelLoader", "emotion2vec/emotion2vec_plus_large", "memo/memo", "fp32")
        (face_model,) = run("MemoFaceModelLoader", "memo/memo", 640, "cpu")
    return {"model": model, "encoder": encoder, "emotion_model": emotion_model, "face_model": face_model}


@pytest.fixture(scope="module")
def vae(tiny_bundle):
    return S.comfy_vae(tiny_bundle["vae"])


RATE = 22050


@pytest.fixture(scope="module")
def speech():
    return S.comfy_audio_dict(S.speech_like(1.2, RATE), RATE)


@pytest.fixture(scope="module")
def encoded(loaded, speech):
    with host.use_host(host.StandaloneHost()):
        return run("MemoAudioEncode", loaded["encoder"], speech, 10.0, 4, 0.0, 0.0)


@pytest.fixture(scope="module")
def face(loaded):
    return run("MemoFaceCrop", loaded["face_model"], S.portrait(), 64, 2.5, 0.25, 0, "error")


def sample(loaded_, vae_, encoded_, face_, **overrides):
    args = dict(memo_model=loaded_["model"], vae=vae_, reference_image=face_[0], memo_audio=encoded_[0], face=face_[2],
                seed=7, steps=2, cfg=3.5, past_frames=2, resolution=64)
    args.update(overrides)
    return run("MemoSampler", **args)


# ----------------------------------------------------------------------------- declarations

FROZEN = json.loads((S.REPO / "tests" / "fixtures" / "workflows_v1" / "node_declarations_v1.json").read_text())
# Changes made on purpose since the V1 declarations were frozen (issue 22): the one resolution rule
# lets Face Crop go down to 8 like the sampler; Generate To File gains a VIDEO output after its old ones.
INTENDED = {("MemoFaceCrop", "resolution", "min"): 8}
ADDED_OUTPUTS = {"MemoGenerateToFile": (["VIDEO"], ["video"])}
# new inputs only optional and after the old ones, so saved workflows (with no value for them) keep running
ADDED_OPTIONAL_INPUTS = {"MemoSampler": ["cpu_tuning"], "MemoGenerateToFile": ["cpu_tuning"],
                         "MemoModelLoader": ["weight_dtype"]}  # issue 20
SETTING_OF_INPUT = {"cfg": "guidance_scale"}  # node inputs named unlike the library's setting


@pytest.mark.parametrize("name", sorted(FROZEN))
def test_v3_declarations_keep_every_v1_input_and_output(name, memo_host):
    """Workflows saved with the V1 nodes load unchanged: same ids, input names and order, types, defaults,
    ranges, tooltips and outputs (new outputs only after the old ones)."""
    cls = v3_classes(memo_host)[name]
    frozen = FROZEN[name]
    schema = cls.GET_SCHEMA()
    assert (schema.display_name, schema.category, schema.description) == (
        frozen["display_name"], frozen["category"], frozen["description"])
    assert bool(schema.is_output_node) == frozen["output_node"]
    declared = cls.INPUT_TYPES()
    for section in ("required", "optional"):
        now = declared.get(section, {})
        added = ADDED_OPTIONAL_INPUTS.get(name, []) if section == "optional" else []
        assert list(now) == list(frozen[section]) + added, (name, section)
        for input_name, old in frozen[section].items():
            kind, options = now[input_name]
            assert kind == old["type"], (name, input_name)
            for key, value in old.items():
                if key in ("type", "options_from_model_folders"):
                    continue
                expected = INTENDED.get((name, input_name, key), value)
                assert options.get(key) == expected, (name, input_name, key, options.get(key), expected)
    added_types, added_names = ADDED_OUTPUTS.get(name, ([], []))
    assert list(cls.RETURN_TYPES) == frozen["outputs"] + added_types
    assert list(cls.RETURN_NAMES) == frozen["output_names"] + added_names
    assert list(cls.OUTPUT_TOOLTIPS)[:len(frozen["output_tooltips"])] == frozen["output_tooltips"]


@pytest.mark.parametrize("name", sorted(IMPLEMENTATIONS))
def test_v3_declarations_are_complete_and_run_their_implementation(name, memo_host):
    comfy_nodes = S.comfy_nodes()
    cls = v3_classes(memo_host)[name]
    schema = cls.GET_SCHEMA()
    assert schema.display_name.startswith("MEMO ") and schema.category.split("/")[0] == "MEMO"
    assert isinstance(schema.description, str) and len(schema.description) > 40
    custom = {t.io_type: t for t in comfy_nodes.CUSTOM_TYPES}
    for item in schema.inputs + schema.outputs:
        kind = item.get_io_type()
        assert kind in NATIVE_TYPES or kind in custom, (name, item.id, kind)
        if kind in custom:  # our objects are custom V3 types, never a native type name
            assert item.Parent is custom[kind], (name, item.id)
        assert item.tooltip, f"{name}.{item.id} has no tooltip"
        if kind in ("INT", "FLOAT") and item in schema.inputs:
            assert item.min <= item.default <= item.max, (name, item.id)
        if kind == "COMBO" and item in schema.inputs and item.default is not None:
            assert item.default in item.options, (name, item.id)
    params = inspect.signature(implementation(name)).parameters
    hidden = {h.name for h in schema.hidden}
    for item in schema.inputs:
        assert item.id in params, f"{name}: the implementation does not accept '{item.id}'"
    for param_name, param in params.items():
        assert param_name in {i.id for i in schema.inputs} | hidden, f"{name}: parameter {param_name} is not declared"
        if param_name in hidden or any(i.id == param_name and i.optional for i in schema.inputs):
            assert param.default is not inspect.Parameter.empty, f"optional {name}.{param_name} needs a default"
    assert first_override(cls, "fingerprint_inputs") is None or name == "MemoLoadState", "loaders must be cached"


def first_override(cls, method):
    from comfy_api.internal import first_real_override

    return first_real_override(cls, method)


def test_widgets_and_checks_follow_the_library_input_policy(memo_host):
    """Every widget that is a generation setting has the library's default, min, max and step."""
    from comfyui_memo.memo_pipeline.settings import LIMITS

    seen = set()
    for name, cls in v3_classes(memo_host).items():
        for item in cls.GET_SCHEMA().inputs:
            setting = SETTING_OF_INPUT.get(item.id, item.id)
            if item.get_io_type() in ("INT", "FLOAT") and setting in LIMITS:
                limit = LIMITS[setting]
                assert (item.default, item.min, item.max, item.step) == (
                    limit.default, limit.minimum, limit.maximum, limit.step), (name, item.id)
                seen.add(setting)
    assert seen == set(LIMITS)


def test_the_extension_registers_all_nodes_bound_to_its_host(memo_host):
    import asyncio

    comfy_nodes = S.comfy_nodes()
    extension = comfy_nodes.MemoExtension(memo_host)
    classes = asyncio.run(extension.get_node_list())
    assert {cls.GET_SCHEMA().node_id for cls in classes} == set(IMPLEMENTATIONS)
    assert all(cls.HOST is memo_host for cls in classes) and comfy_nodes.MemoNode.HOST is None
    with host.use_host(host.StandaloneHost()):  # the bound host wins over the caller's
        (loader,) = [c for c in classes if c.GET_SCHEMA().node_id == "MemoModelLoader"]
        assert loader.INPUT_TYPES()["required"]["checkpoint"][1]["options"] == ["memo/memo"]


def test_root_package_has_only_the_v3_entry():
    """ComfyUI takes the V1 route when NODE_CLASS_MAPPINGS exists, so the pack must not define it."""
    assert not hasattr(PACK, "NODE_CLASS_MAPPINGS") and callable(PACK.comfy_entrypoint)
    assert set(IMPLEMENTATIONS) == {
        "MemoModelLoader", "MemoAudioEncoderLoader", "MemoAudioEncode", "MemoEmotionModelLoader", "MemoEmotionDetect",
        "MemoEmotionSchedule", "MemoVocalSeparation", "MemoFaceModelLoader", "MemoFaceCrop", "MemoFaceEmbed",
        "MemoPasteBack", "MemoSampler", "MemoGenerateToFile", "MemoSaveState", "MemoLoadState", "MemoQualityReport"}
    assert isinstance(host.get_host(), host.StandaloneHost)  # no host is chosen by importing the pack


def test_root_init_outside_a_package_refuses_to_register():
    import asyncio
    import runpy

    entry = runpy.run_path(str(S.REPO / "__init__.py"))["comfy_entrypoint"]
    with pytest.raises(ImportError, match="imported as a package"):
        asyncio.run(entry())


def test_nodes_package_never_imports_comfyui_directly():
    """Only comfy_adapter.py may import ComfyUI; nothing may import ComfyUI's top-level `nodes` absolutely."""
    import ast

    banned = {"comfy", "comfy_extras", "comfy_api", "folder_paths", "nodes", "server", "execution", "latent_preview"}
    allowed = {"comfy_adapter.py": banned, "comfy_nodes.py": {"comfy_api"}}  # ComfyUI's host; the V3 declarations
    for path in list((S.REPO / "nodes").glob("*.py")) + [S.REPO / "__init__.py"]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                roots = {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                roots = {(node.module or "").split(".")[0]}
            else:
                continue
            assert not roots & (banned - allowed.get(path.name, set())), f"{path.name}:{node.lineno} imports {roots}"


# ----------------------------------------------------------------------------- host

def test_nodes_ask_the_host_and_the_library():
    """No node reaches around the host, into another module's private names, or into network configs."""
    import ast
    import re

    for path in (S.REPO / "nodes").glob("*.py"):
        if path.name in ("host.py", "comfy_adapter.py"):
            continue
        text = path.read_text()
        assert not re.search(r"\bComfyHost\b|\.adapter\b", text), f"{path.name} reaches around the host"
        assert not re.search(r"\.config\b", text), f"{path.name} reads a network's config"
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ImportFrom) and node.level:
                private = [a.name for a in node.names if a.name.startswith("_")]
                assert not private, f"{path.name}:{node.lineno} imports private {private}"


def test_both_hosts_implement_the_whole_interface():
    """ComfyHost cannot be imported here; its class body is read instead (the live tests run it)."""
    import ast

    tree = ast.parse((S.REPO / "nodes" / "comfy_adapter.py").read_text())
    (comfy_host,) = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "ComfyHost"]
    assert [ast.unparse(base) for base in comfy_host.bases] == ["Host"]
    defined = {n.name for n in comfy_host.body if isinstance(n, ast.FunctionDef)}
    assert host.Host.__abstractmethods__ <= defined, host.Host.__abstractmethods__ - defined
    assert "register_model_folders" in defined
    assert not host.StandaloneHost.__abstractmethods__


def test_standalone_host_answers_what_comfyui_would():
    h = host.StandaloneHost()
    h.register_model_folders()  # nothing to register outside ComfyUI
    assert h.model_dtype((torch.bfloat16, torch.float32)) == torch.float32
    assert h.model_dtype((torch.float16,)) == torch.float16
    assert str(h.compute_device()) == str(h.offload_device()) == "cpu"
    assert isinstance(host.get_host(), host.StandaloneHost) and issubclass(host.StandaloneHost, host.Host)


def test_host_is_chosen_by_the_caller_and_belongs_to_the_context():
    """No module-level host: `use_host` sets it for the running context only, nested blocks restore it,
    and another thread does not see it; host.py does not import the ComfyUI side."""
    import ast
    import threading

    first, second = host.StandaloneHost(), host.StandaloneHost()
    with host.use_host(first):
        with host.use_host(second):
            assert host.get_host() is second
        assert host.get_host() is first
        seen = []
        thread = threading.Thread(target=lambda: seen.append(host.get_host()))
        thread.start()
        thread.join()
        assert seen[0] is not first
    assert host.get_host() not in (first, second) and host.get_host() is not host.get_host()
    imports = [n for n in ast.walk(ast.parse((S.REPO / "nodes" / "host.py").read_text()))
               if isinstance(n, ast.ImportFrom) and n.level]
    assert all(n.module != "comfy_adapter" for n in imports)


def test_standalone_host_without_roots_gives_a_clear_error():
    with host.use_host(host.StandaloneHost()):
        with pytest.raises(ValueError, match="input 'checkpoint'.*no 'memo' model folder is known outside ComfyUI"):
            run("MemoModelLoader", "memo/memo", "fp32", "sdpa")
        with pytest.raises(ValueError, match="no output folder"):
            host.get_host().save_path("MEMO/x")


def test_save_path_numbering_and_escapes(tmp_path):
    h = host.StandaloneHost(output_dir=tmp_path)
    folder, name, counter, sub = h.save_path("MEMO/clip")
    assert (Path(folder), name, counter, sub) == (tmp_path / "MEMO", "clip", 1, "MEMO")
    (tmp_path / "MEMO" / "clip_00007_.mp4").write_bytes(b"x")
    (tmp_path / "MEMO" / "clip_00003_.state.safetensors").write_bytes(b"x")
    assert h.save_path("MEMO/clip")[2] == 8
    for bad in ("../up", "/abs/x", "MEMO/"):
        with pytest.raises(ValueError):
            h.save_path(bad)


def test_model_lists_come_from_the_host_roots(memo_host):
    from comfyui_memo.nodes import loaders

    assert loaders.memo_checkpoints() == ["memo/memo"]
    assert loaders.audio_encoder_choices() == ["audio_encoders/wav2vec2-base-960h"]
    assert loaders.emotion2vec_choices() == ["emotion2vec/emotion2vec_plus_large"]
    assert loaders.face_model_choices() == ["memo/memo", HAAR]
    assert loaders.vocal_model_choices() == ["memo/memo/misc/vocal_separator/Kim_Vocal_2.onnx"]
    assert loaders.checkpoint_options() == ["memo/memo"]


# ----------------------------------------------------------------------------- loaders

def test_model_loader_outputs(loaded):
    model = loaded["model"]
    assert isinstance(model, memo_types.MemoModel) and model.dtype == "fp32" and model.attention == "sdpa"
    assert model.models.emotion_classifier is None  # the emotion loader brings its own
    assert {p.dtype for m in model.modules() for p in m.parameters()} == {torch.float32}


def test_model_loader_weight_dtype_stores_layers_smaller_and_the_sampler_runs(models_root, loaded, vae, encoded, face):
    """Outside ComfyUI the host supplies no layer classes: the library's casting layers store the weights."""
    from comfyui_memo.memo_pipeline.layers import CastingLayer

    with host.use_host(host.StandaloneHost(models_root)) as h:
        assert h.layer_classes(torch.float8_e4m3fn, torch.float32) is None
        (model,) = run("MemoModelLoader", "memo/memo", "fp32", "sdpa", "fp8_e4m3fn")
    assert (model.dtype, model.weight_dtype) == ("fp32", "fp8_e4m3fn")
    net = model.models.diffusion_net
    linear = [m for m in net.modules() if isinstance(m, torch.nn.Linear)]
    norms = [m for m in net.modules() if isinstance(m, (torch.nn.GroupNorm, torch.nn.LayerNorm)) and m.weight is not None]
    assert linear and all(isinstance(m, CastingLayer) and m.weight.dtype == torch.float8_e4m3fn for m in linear)
    assert norms and all(m.weight.dtype == torch.float32 for m in norms)
    with host.use_host(host.StandaloneHost()):
        fp8 = sample({**loaded, "model": model}, vae, encoded, face, max_clips=1)[0]
        full = sample(loaded, vae, encoded, face, max_clips=1)[0]
    assert fp8.shape == full.shape and torch.isfinite(fp8).all()
    assert 0 < (fp8 - full).abs().max() < 1  # rounded weights: close, not equal


def test_model_loader_errors_name_the_input(memo_host, models_root, tmp_path):
    root = Path(models_root["memo"][0])
    (root / "empty").mkdir(exist_ok=True)
    with pytest.raises(ValueError, match=r"checkpoint 'memo/empty'.*not a MEMO checkpoint folder"):
        run("MemoModelLoader", "memo/empty", "fp32", "sdpa")
    with pytest.raises(ValueError, match=r"input 'checkpoint'.*not found"):
        run("MemoModelLoader", "memo/missing", "fp32", "sdpa")
    with pytest.raises(ValueError, match=r"input 'checkpoint'.*outside"):
        run("MemoModelLoader", "memo/../../etc", "fp32", "sdpa")
    with pytest.raises(ValueError, match=r"input 'checkpoint'.*not under models/memo"):
        run("MemoModelLoader", "vae/x", "fp32", "sdpa")
    with pytest.raises(ValueError, match=r"input 'dtype'"):
        run("MemoModelLoader", "memo/memo", "fp8", "sdpa")
    with pytest.raises(ValueError, match=r"input 'weight_dtype' must be one of default, bf16, fp16, fp8_e4m3fn"):
        run("MemoModelLoader", "memo/memo", "fp32", "sdpa", "fp4")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match=r"attention.*xformers"):
            run("MemoModelLoader", "memo/memo", "fp32", "xformers")
    # a truncated weights file is reported with its path
    import shutil

    broken = root / "broken"
    shutil.copytree(root / "memo", broken, dirs_exist_ok=True, ignore=shutil.ignore_patterns("misc"))
    weights = broken / "image_proj" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ValueError, match=r"checkpoint 'memo/broken'.*image_proj.*corrupt or truncated"):
        run("MemoModelLoader", "memo/broken", "fp32", "sdpa")


def test_other_loaders_report_bad_files(memo_host, models_root):
    enc_root = Path(models_root["audio_encoders"][0])
    (enc_root / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match=r"audio_encoder 'audio_encoders/junk.safetensors'"):
        run("MemoAudioEncoderLoader", "audio_encoders/junk.safetensors", "fp32")
    e2v_root = Path(models_root["emotion2vec"][0])
    (e2v_root / "nothing").mkdir(exist_ok=True)
    with pytest.raises(ValueError, match=r"input 'emotion2vec'.*neither model.safetensors nor model.pt"):
        run("MemoEmotionModelLoader", "emotion2vec/nothing", "memo/memo", "fp32")
    with pytest.raises(ValueError, match=r"input 'face_models'.*not found"):
        run("MemoFaceModelLoader", "insightface/antelopev2", 640, "cpu")
    with pytest.raises(ValueError, match=r"detection_size"):
        run("MemoFaceModelLoader", "memo/memo", 600, "cpu")


# ----------------------------------------------------------------------------- audio

def test_audio_encode_outputs(encoded, speech):
    memo_audio, trimmed, frames, fps = encoded
    assert isinstance(memo_audio, memo_types.MemoAudio)
    assert frames == math.ceil(1.2 * 10) == memo_audio.num_frames == 12 and fps == 10.0
    assert memo_audio.padded_frames == 12 and memo_audio.frames_per_clip == 4 and memo_audio.num_clips == 3
    assert torch.equal(trimmed["waveform"], speech["waveform"]) and trimmed["sample_rate"] == RATE
    layers = memo_audio.features.layer_features
    assert layers.shape[0] == 12 and torch.isfinite(layers).all()


def test_audio_encode_trims(loaded, speech):
    memo_audio, trimmed, frames, _ = run("MemoAudioEncode", loaded["encoder"], speech, 10.0, 4, 0.2, 0.5)
    assert trimmed["waveform"].shape == (1, 2, int(0.5 * RATE))
    assert torch.equal(trimmed["waveform"][0], speech["waveform"][0, :, 4410:4410 + 11025])
    assert frames == 5 and memo_audio.padded_frames == 8
    segment = memo_audio.as_comfy_audio(2, 4)
    assert segment["waveform"].shape[-1] == round(0.2 * RATE)


@pytest.mark.parametrize("waveform, word", [(torch.zeros(1, 1, RATE), "silent"),
                                           (torch.full((1, 1, RATE), 5e-5), "nearly silent")])
def test_silent_audio_warns_and_encodes_as_the_library_and_cli_do(loaded, caplog, waveform, word):
    with caplog.at_level("WARNING"):
        memo_audio = run("MemoAudioEncode", loaded["encoder"], {"waveform": waveform, "sample_rate": RATE},
                         fps=10.0, frames_per_clip=4, start_seconds=0.0, duration_seconds=0.0)[0]
    assert f"is {word}" in caplog.text and memo_audio.num_frames == 10


@pytest.mark.parametrize("audio, kwargs, message", [
    ({"waveform": torch.randn(1, 1, 50) * 0.1, "sample_rate": RATE}, {}, r"too short"),
    ({"waveform": torch.randn(2, 1, RATE) * 0.1, "sample_rate": RATE}, {}, r"input 'audio' holds 2 tracks"),
    ({"waveform": torch.randn(1, 1, RATE) * 0.1, "sample_rate": 0}, {}, r"sample_rate must be a positive integer"),
    ({"waveform": torch.full((1, 1, RATE), float("nan")), "sample_rate": RATE}, {}, r"NaN"),
    ("speech.wav", {}, r"input 'audio' must be an AUDIO"),
    ({"waveform": torch.randn(1, 1, RATE) * 0.1, "sample_rate": RATE}, {"start_seconds": 5.0}, r"past the end"),
    ({"waveform": torch.randn(1, 1, RATE) * 0.1, "sample_rate": RATE}, {"fps": 0.0}, r"input 'fps'"),
    ({"waveform": torch.randn(1, 1, RATE) * 0.1, "sample_rate": RATE}, {"frames_per_clip": 0}, r"frames_per_clip"),
])
def test_audio_encode_rejects_bad_audio(loaded, audio, kwargs, message):
    args = dict(fps=10.0, frames_per_clip=4, start_seconds=0.0, duration_seconds=0.0)
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        run("MemoAudioEncode", loaded["encoder"], audio, **args)


def test_emotion_schedule(encoded):
    emotion, summary = run("MemoEmotionSchedule", encoded[0], "0:neutral, 0.5:happy\n9f:sad")
    labels = emotion.frame_labels(encoded[0])
    assert labels.tolist() == [4] * 5 + [3] * 4 + [6] * 3
    assert summary.startswith("0.00-0.50 s neutral; 0.50-0.90 s happy; 0.90-1.20 s sad")
    emotion, summary = run("MemoEmotionSchedule", encoded[0], "0:neutral, 30:happy")
    assert "ignored" in summary  # the late entry is reported, not silently dropped
    for bad, message in (("0:elated", r"schedule: unknown emotion label 'elated'"),
                         ("1:happy", r"must start at time 0"), ("", r"schedule.*empty")):
        with pytest.raises(ValueError, match=message):
            run("MemoEmotionSchedule", encoded[0], bad)


def test_emotion_detect_follows_the_official_windows(loaded, encoded):
    from comfyui_memo.memo_pipeline.audio.emotion_detect import sample_emotion_labels
    from comfyui_memo.memo_pipeline.audio.io import load_audio

    trimmed = encoded[1]
    with host.use_host(host.StandaloneHost()) as h:
        emotion, summary = run("MemoEmotionDetect", loaded["emotion_model"], trimmed)
    model = loaded["emotion_model"]
    samples = torch.from_numpy(load_audio(trimmed).samples)
    expected = sample_emotion_labels(samples, model.backbone, model.classifier)
    assert torch.equal(emotion.sample_labels.long(), expected.long())
    assert h.progress_log[-1].current == h.progress_log[-1].total == 2
    assert emotion.frame_labels(encoded[0]).shape == (12,) and summary.endswith(tuple(
        ("angry", "disgusted", "fearful", "happy", "neutral", "other", "sad", "surprised", "unknown")))
    # labels made on another cut of the audio are refused instead of being stretched
    other, *_ = run("MemoAudioEncode", loaded["encoder"], trimmed, 10.0, 4, 0.0, 0.5)
    with pytest.raises(ValueError, match="detected on 1.20 s of audio but the MEMO audio is 0.50 s"):
        emotion.frame_labels(other)
    with pytest.raises(ValueError, match="too short for emotion detection"):
        run("MemoEmotionDetect", model, {"waveform": torch.randn(1, 1, 100), "sample_rate": 16000})


def test_vocal_separation_node(memo_host, speech):
    model = "memo/memo/misc/vocal_separator/Kim_Vocal_2.onnx"
    (vocals,) = run("MemoVocalSeparation", speech, model, False, "full-band")
    assert vocals["sample_rate"] == RATE and vocals["waveform"].shape == speech["waveform"].shape
    # the stand-in model halves the spectrum and the level is kept, so the stem is about half the mix
    ratio = vocals["waveform"].std() / speech["waveform"].std()
    assert 0.35 < float(ratio) < 0.65
    # the default is MEMO's order: the 16 kHz 16-bit track is separated, the stem is 16 kHz
    (official,) = run("MemoVocalSeparation", speech, model, False)
    samples = speech["waveform"].shape[-1]
    assert official["sample_rate"] == 16000 and official["waveform"].shape[:2] == speech["waveform"].shape[:2]
    assert abs(official["waveform"].shape[-1] - samples * 16000 / RATE) <= 1
    assert 0.35 < float(official["waveform"].std() / speech["waveform"].std()) < 0.65
    assert torch.equal(official["waveform"], torch.round(official["waveform"] * 32768) / 32768)  # 16-bit, as MEMO
    with pytest.raises(ValueError, match=r"input 'model'.*not found"):
        run("MemoVocalSeparation", speech, "vocal_separator/Kim_Vocal_2.onnx", True)


def test_vocal_separation_without_onnxruntime_is_a_clear_error(memo_host, speech, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(ValueError, match="vocal separation unavailable.*onnxruntime"):
        run("MemoVocalSeparation", speech, "memo/memo/misc/vocal_separator/Kim_Vocal_2.onnx", True)


# ----------------------------------------------------------------------------- face

def test_face_crop_and_embed(loaded, face):
    image, crop, identity = face
    assert image.shape == (1, 64, 64, 3) and image.dtype == torch.float32
    assert crop.resolution == 64 and crop.face_box == S.FACE_BOX
    assert crop.size == round(48 * 2.5) and (crop.x0, crop.y0) == (4, 0)
    assert identity.embedding.shape == (1, 512) and identity.embedding.abs().sum() > 0
    (embedded,) = run("MemoFaceEmbed", loaded["face_model"], S.portrait(), 0, "error")
    assert torch.allclose(embedded.embedding, identity.embedding)


def test_face_nodes_without_a_face(tmp_path, loaded):
    need("onnx")
    from comfyui_memo.memo_pipeline.face import FaceAnalyzer

    det = S.build_scrfd(tmp_path / "none.onnx", faces=0)
    rec = S.build_arcface(tmp_path / "rec.onnx")
    blind = memo_types.MemoFaceModel(FaceAnalyzer(det, rec, providers=["CPUExecutionProvider"]), "blind")
    with pytest.raises(ValueError, match="image: no face found") as crop_error:
        run("MemoFaceCrop", blind, S.portrait(), 64, 2.5, 0.25, 0, "error")
    with pytest.raises(ValueError, match="image: no face found") as embed_error:
        run("MemoFaceEmbed", blind, S.portrait(), 0, "error")
    for caught in (crop_error, embed_error):  # the message names the option that goes on, and its value
        assert "no_face" in str(caught.value) and "'continue without identity'" in str(caught.value)
        assert "continue without identity" in sys.modules[f"{PACK.__name__}.nodes.face_nodes"].NO_FACE_CHOICES
        assert "cropping the picture closer to the face" in str(caught.value)
    assert "crop the whole picture" in str(crop_error.value) and "MEMO Face Crop" in str(embed_error.value)
    image, crop, identity = run("MemoFaceCrop", blind, S.portrait(96, 128), 64, 2.5, 0.25, 0, "continue without identity")
    assert image.shape == (1, 64, 64, 3) and crop.size == 128 and identity.embedding.abs().sum() == 0
    (identity,) = run("MemoFaceEmbed", blind, S.portrait(), 0, "continue without identity")
    assert identity.embedding.abs().sum() == 0 and identity.note
    with pytest.raises(ValueError, match="face index 1 requested"):
        run("MemoFaceEmbed", loaded["face_model"], S.portrait(), 1, "error")
    with pytest.raises(ValueError, match="batch of 2 images"):
        run("MemoFaceEmbed", loaded["face_model"], torch.rand(2, 64, 64, 3), 0, "error")


@pytest.mark.parametrize("resolution, message", [(60, "not a multiple of 8"), (2056, "<= 2048"), (0, ">= 8")])
def test_face_crop_names_the_resolution_input(loaded, resolution, message):
    with pytest.raises(ValueError, match=f"^input 'resolution'.*{message}"):
        run("MemoFaceCrop", loaded["face_model"], S.portrait(), resolution, 2.5, 0.25, 0, "error")
    image, crop, _ = run("MemoFaceCrop", loaded["face_model"], S.portrait(), 8, 2.5, 0.25, 0, "error")
    assert image.shape == (1, 8, 8, 3) and crop.resolution == 8  # the one resolution rule: 8 works, as in the sampler


def test_haar_face_model_crops_without_identity(memo_host):
    (haar,) = run("MemoFaceModelLoader", HAAR, 640, "cpu")
    assert not haar.can_embed


@pytest.fixture
def haar_module(monkeypatch):
    """The pack's haar module with its cached availability cleared before and after the test."""
    haar = sys.modules[f"{PACK.__name__}.memo_pipeline.face.haar"]
    haar.haar_unavailable_reason.cache_clear()
    yield haar
    monkeypatch.undo()
    haar.haar_unavailable_reason.cache_clear()


def _face_choices():
    from comfyui_memo.nodes import loaders

    return loaders.face_model_options()


def test_haar_choice_is_offered_only_when_opencv_can_run_it(memo_host, haar_module, monkeypatch, tmp_path):
    import types

    import cv2

    assert HAAR in _face_choices()  # OpenCV 4 with its cascades (the test requirements) works
    monkeypatch.setitem(sys.modules, "cv2", None)  # a README install: requirements.txt has no OpenCV
    haar_module.haar_unavailable_reason.cache_clear()
    assert _face_choices() == ["memo/memo"]
    with pytest.raises(ValueError, match="input 'face_models': the Haar face detector is unavailable: OpenCV"):
        run("MemoFaceModelLoader", HAAR, 640, "cpu")

    # OpenCV 5 without the contrib package: no CascadeClassifier
    opencv5 = types.SimpleNamespace(__version__="5.0.0", data=types.SimpleNamespace(haarcascades=str(tmp_path)))
    monkeypatch.setitem(sys.modules, "cv2", opencv5)
    haar_module.haar_unavailable_reason.cache_clear()
    assert HAAR not in _face_choices()
    assert "contrib" in haar_module.haar_unavailable_reason()

    # OpenCV 5 contrib: CascadeClassifier, but the wheel ships no cascade files; a system data folder has them
    opencv5.CascadeClassifier = cv2.CascadeClassifier
    monkeypatch.setattr(haar_module, "CASCADE_DIRS", (str(tmp_path / "share"),))
    haar_module.haar_unavailable_reason.cache_clear()
    assert HAAR not in _face_choices() and "haarcascade_frontalface_default.xml" in haar_module.haar_unavailable_reason()
    (tmp_path / "share").mkdir()
    source = Path(cv2.data.haarcascades) / haar_module.DEFAULT_CASCADE
    (tmp_path / "share" / haar_module.DEFAULT_CASCADE).write_bytes(source.read_bytes())
    haar_module.haar_unavailable_reason.cache_clear()
    assert HAAR in _face_choices()
    (detector,) = run("MemoFaceModelLoader", HAAR, 640, "cpu")
    assert detector.analyzer.detector.cascade_path == str(tmp_path / "share" / haar_module.DEFAULT_CASCADE)


def test_workflow_readme_says_the_haar_choice_needs_opencv():
    text = " ".join((S.REPO / "workflows" / "README.md").read_text().split())
    sentence = text[text.index("OpenCV Haar"):][:400]
    assert "needs no files" not in text and "opencv-python-headless" in sentence and "requirements.txt" in sentence


def test_paste_back_node(face):
    image, crop, _ = face
    original = S.portrait()
    frames = torch.rand(3, 64, 64, 3)
    (pasted,) = run("MemoPasteBack", frames, crop, original, 0.1, False)
    assert pasted.shape == (3, 128, 128, 3)
    untouched = pasted[:, :, 124:]  # right of the crop square (x >= 124) keeps the original
    assert torch.allclose(untouched, original[:, :, 124:].expand(3, -1, -1, -1))
    with pytest.raises(ValueError, match="same resolution as MEMO Face Crop"):
        run("MemoPasteBack", torch.rand(3, 32, 32, 3), crop, original, 0.1, False)
    with pytest.raises(ValueError, match="original_image' has 2 frames"):
        run("MemoPasteBack", frames, crop, original.repeat(2, 1, 1, 1), 0.1, False)
    with pytest.raises(ValueError, match="input 'crop' must be a MEMO_CROP"):
        run("MemoPasteBack", frames, {"x0": 1}, original, 0.1, False)


# ----------------------------------------------------------------------------- VAE bridge and previews

def test_vae_bridge_matches_diffusers_vae_on_the_same_weights(vae):
    bridge = vae_bridge.ComfyVAEBridge(vae)
    reference = DiffusersVAE(vae.first_stage_model)
    frames = torch.rand(3, 3, 64, 64) * 2 - 1
    latents = bridge.encode(frames)
    assert latents.shape == (3, 4, 8, 8)
    torch.testing.assert_close(latents, reference.encode(frames), atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(bridge.decode(latents), reference.decode(latents), atol=2e-5, rtol=1e-4)
    assert bridge.decode(latents).shape == (3, 3, 64, 64)


def test_vae_bridge_refuses_other_latent_spaces(vae):
    class FluxLike(S.ComfyConventionVAE):
        latent_channels = 16

    with pytest.raises(ValueError, match="input 'vae': MEMO needs an SD1.5 image VAE.*16 latent channels"):
        vae_bridge.ComfyVAEBridge(FluxLike(vae.first_stage_model))
    with pytest.raises(ValueError, match="input 'vae' is not a VAE"):
        vae_bridge.ComfyVAEBridge(object())


def test_step_preview_is_the_flow_matching_x0_estimate():
    latents = torch.randn(1, 4, 3, 8, 8)
    velocity = torch.randn(1, 4, 3, 8, 8)
    torch.testing.assert_close(preview.denoised_latent(latents, velocity, 0.25),
                               latents[0, :, 1] - 0.25 * velocity[0, :, 1])
    torch.testing.assert_close(preview.denoised_latent(latents, velocity, 0.5, frame=9),
                               latents[0, :, 2] - 0.5 * velocity[0, :, 2])
    with pytest.raises(ValueError, match=r"\(1, 4, F, h, w\)"):
        preview.denoised_latent(latents[0], velocity[0], 0.25)


def test_standalone_progress_hands_latents_to_its_previewer():
    seen = []
    bar = host.StandaloneHost(previewer=lambda latent: seen.append(latent) or "picture").progress(4)
    latent = torch.randn(4, 8, 8)
    bar.set_latent(2, latent)
    assert seen == [latent] and bar.latent is latent and bar.preview == "picture" and bar.current == 2
    quiet = host.StandaloneHost().progress(4)  # no previewer: like --preview-method none, the latent is kept
    quiet.set_latent(1, latent)
    assert quiet.preview is None and quiet.latent is latent and quiet.updates == 1


# ----------------------------------------------------------------------------- sampler

def test_sampler_outputs_match_declarations(loaded, vae, encoded, face, memo_host):
    images, fps, state, audio = sample(loaded, vae, encoded, face)
    assert images.shape == (12, 64, 64, 3) and images.dtype == torch.float32
    assert 0 <= float(images.min()) and float(images.max()) <= 1 and float(images.std()) > 0.01
    assert fps == 10.0
    assert isinstance(state, memo_types.MemoState) and state.next_clip == 3
    assert torch.equal(audio["waveform"], encoded[1]["waveform"]) and audio["sample_rate"] == RATE
    bar = memo_host.progress_log[-1]
    assert bar.total == 3 * 2 and bar.current == 6 and bar.updates >= 9  # every step + every clip
    assert bar.preview is not None and bar.preview.shape[-1] == 3  # the last clip's decoded middle frame
    assert bar.latent is not None and bar.latent.shape == (4, 8, 8)  # the last step's denoised estimate


def test_sampler_loads_each_network_right_before_it_runs(loaded, vae, encoded, face, models_root, tmp_path):
    models = loaded["model"].models
    order = []

    class Recording(host.StandaloneHost):
        def load_to_device(self, modules):
            modules = list(modules)
            order.append(modules)
            super().load_to_device(modules)

    runs = {"diffusion_net": 0}
    counter = models.diffusion_net.register_forward_hook(lambda *_: runs.__setitem__("diffusion_net", runs["diffusion_net"] + 1))
    try:
        with host.use_host(Recording(models_root, output_dir=tmp_path)):
            sample(loaded, vae, encoded, face)
    finally:
        counter.remove()
    assert all(len(call) == 1 for call in order)  # one network per load, never all of them at once
    names = {id(module): name for name, module in models.modules().items()}
    loads = [names[id(call[0])] for call in order]
    assert set(loads) == {"reference_net", "diffusion_net", "image_proj", "audio_proj"}
    assert loads.count("diffusion_net") == runs["diffusion_net"] == 3 * 2  # once per step, just before it
    assert loads.index("reference_net") < loads.index("diffusion_net")
    assert not any(m._forward_pre_hooks for m in models.modules().values())  # nothing left on the networks
    assert models.device == models.diffusion_net.device


def test_sampler_on_the_cpu_logs_how_long_the_run_will_take(loaded, vae, encoded, face, memo_host, caplog):
    with caplog.at_level("INFO", logger="comfyui-memo"):
        sample(loaded, vae, encoded, face)
    lines = [r.getMessage() for r in caplog.records if "MEMO sampler on the CPU" in r.getMessage()]
    assert len(lines) == 2, lines
    assert "the first step took" in lines[0] and "the 6 steps of this run (3 clip(s) x 2) will take roughly" in lines[0]
    assert "the first clip took" in lines[1] and "the remaining 2 clip(s) will take roughly" in lines[1]


def test_run_estimate_scales_the_first_step_and_clip():
    sampler = sys.modules[f"{PACK.__name__}.nodes.sampler"]
    now = [100.0]
    estimate = sampler.RunEstimate(clips=4, steps_per_clip=20, clock=lambda: now[0], log=lambda text: None)
    now[0] += 45.0
    estimate.step_done(1)
    for done in range(2, 21):
        estimate.step_done(done)
    now[0] += 20 * 40.0 - 45.0
    estimate.clip_done(1)
    estimate.clip_done(2)
    assert estimate.messages == [
        "MEMO sampler on the CPU: the first step took 45 s, so the 80 steps of this run (4 clip(s) x 20) will take "
        "roughly 60 min; fewer steps, cfg <= 1 or a lower resolution make it faster",
        "MEMO sampler on the CPU: the first clip took 13 min; the remaining 3 clip(s) will take roughly 40 min more"]


def test_sampler_is_deterministic_and_resumable(loaded, vae, encoded, face, memo_host):
    full, *_ = sample(loaded, vae, encoded, face, seed=11)
    first, _, state, audio = sample(loaded, vae, encoded, face, seed=11, max_clips=1)
    assert first.shape[0] == 4 and state.next_clip == 1
    assert audio["waveform"].shape[-1] == round(0.4 * RATE)
    rest, _, end, audio2 = sample(loaded, vae, encoded, face, seed=999, state=state)  # the state's noise wins
    assert rest.shape[0] == 8 and end.next_clip == 3
    torch.testing.assert_close(torch.cat([first, rest]), full, atol=1e-4, rtol=0)
    assert state.next_clip == 1  # using a state does not change it
    again, *_ = sample(loaded, vae, encoded, face, seed=999, state=state)
    torch.testing.assert_close(again, rest)
    with pytest.raises(ValueError, match="already complete"):
        sample(loaded, vae, encoded, face, state=end)
    with pytest.raises(ValueError, match="resolution 64, this run asks for 72"):
        sample(loaded, vae, encoded, face, state=state, resolution=72)


def test_sampler_emotion_changes_the_video(loaded, vae, encoded, face, memo_host):
    neutral, *_ = sample(loaded, vae, encoded, face)
    happy = run("MemoEmotionSchedule", encoded[0], "happy")[0]
    emotional, *_ = sample(loaded, vae, encoded, face, emotion=happy)
    assert (emotional - neutral).abs().max() > 1e-3


@pytest.mark.parametrize("overrides, message", [
    ({"resolution": 68}, r"input 'resolution' 68 is not a multiple of 8"),
    ({"steps": 201}, r"input 'steps' must be <= 200"),
    ({"past_frames": 65}, r"input 'past_frames' must be <= 64"),
    ({"resolution": 2056}, r"input 'resolution' must be <= 2048"),
    ({"seed": 7.0}, r"input 'seed' must be a whole number"),
    ({"cfg": float("nan")}, r"input 'cfg'"),
    ({"steps": 0}, r"input 'steps'"),
    ({"reference_image": torch.rand(2, 64, 64, 3)}, r"reference_image' is a batch of 2"),
    ({"face": None}, r"input 'face' must be a MEMO_FACE"),
    ({"memo_audio": "audio"}, r"input 'memo_audio' must be a MEMO_AUDIO"),
    ({"vae": object()}, r"input 'vae' is not a VAE"),
])
def test_sampler_rejects_bad_inputs(loaded, vae, encoded, face, memo_host, overrides, message):
    with pytest.raises(ValueError, match=message):
        sample(loaded, vae, encoded, face, **overrides)


def _bounds(limit):
    below, above = limit.minimum - limit.step, limit.maximum + limit.step
    return [limit.minimum, limit.maximum, below, above]


@pytest.mark.parametrize("input_name", ["seed", "steps", "cfg", "past_frames", "resolution", "max_clips"])
def test_sampler_checks_accept_and_refuse_what_the_library_does(loaded, vae, encoded, face, memo_host, input_name):
    """At and just past every bound, the node refuses exactly when the library does (GenerationSettings.validate
    and check_inputs for the settings, the one resolution rule, the max_clips limit)."""
    from comfyui_memo.memo_pipeline.pipeline import GenerationSettings, MemoPipeline, reference_pixels
    from comfyui_memo.memo_pipeline.settings import LIMITS, check_resolution
    from comfyui_memo.nodes import sampler as sampler_module

    setting = SETTING_OF_INPUT.get(input_name, input_name)
    base = dict(memo_model=loaded["model"], vae=vae, reference_image=face[0], memo_audio=encoded[0], face=face[2],
                seed=7, steps=2, cfg=3.5, past_frames=2, resolution=64)
    for value in _bounds(LIMITS[setting]):
        try:
            sampler_module.prepare_run(**{**base, input_name: value})
            node_ok = True
        except ValueError:
            node_ok = False
        try:
            if setting == "max_clips":
                LIMITS["max_clips"].check(value, "max_clips")
            elif setting == "resolution":
                check_resolution(value)
            else:
                fields = dict(steps=2, guidance_scale=3.5, frames_per_clip=4, past_frames=2, init_past_frames=2, seed=7,
                              fps=10.0)
                fields.update({setting: value, **({"init_past_frames": value} if setting == "past_frames" else {})})
                settings = GenerationSettings(**fields)
                pipeline = MemoPipeline(loaded["model"].models, vae_bridge.ComfyVAEBridge(vae))
                pipeline.check_inputs(reference_pixels(torch.rand(64, 64, 3)), face[2].embedding,
                                      encoded[0].features, None, settings, None)
            library_ok = True
        except ValueError:
            library_ok = False
        assert node_ok == library_ok, (input_name, value, node_ok, library_ok)


def test_sampler_refuses_a_mismatched_audio_encoder(loaded, vae, encoded, face, memo_host):
    features = encoded[0].features
    wide = type(features)(torch.zeros(12, 3, 16), 12, 12, 10.0, 1.2)
    audio = memo_types.MemoAudio(wide, 4, encoded[0].waveform, RATE, "wav2vec2-large")
    with pytest.raises(ValueError, match="3 layers x 16 channels.*expects 2 x 16"):
        sample(loaded, vae, encoded, face, memo_audio=audio)


def test_sampler_cancel_between_steps(loaded, vae, encoded, face, models_root, tmp_path):
    calls = {"n": 0}

    def cancel():
        calls["n"] += 1
        return calls["n"] > 3

    with host.use_host(host.StandaloneHost(models_root, output_dir=tmp_path, should_cancel=cancel)):
        with pytest.raises(GenerationCancelled):
            sample(loaded, vae, encoded, face)
    assert calls["n"] == 4


# ----------------------------------------------------------------------------- streaming to a file

def generate_to_file(loaded_, vae_, encoded_, face_, **overrides):
    args = dict(memo_model=loaded_["model"], vae=vae_, reference_image=face_[0], memo_audio=encoded_[0], face=face_[2],
                seed=7, steps=2, cfg=3.5, past_frames=2, resolution=64, filename_prefix="MEMO/test")
    args.update(overrides)
    cls = NODES["MemoGenerateToFile"]
    return cls().generate(**args)


def test_generate_to_file_streams_a_playable_video(loaded, vae, encoded, face, memo_host, tmp_path):
    out = generate_to_file(loaded, vae, encoded, face)
    path, frames, state = out["result"]
    assert out["ui"] == {"images": [{"filename": "test_00001_.mp4", "subfolder": "MEMO", "type": "output"}],
                         "animated": (True,)}
    assert Path(path) == tmp_path / "output" / "MEMO" / "test_00001_.mp4" and frames == 12
    info = read_video_info(path)
    assert (info["frames"], info["width"], info["height"], info["fps"]) == (12, 64, 64, 10.0)
    assert info["audio_codec"] == "aac" and info["audio_duration"] == pytest.approx(1.2, abs=0.05)
    assert state.next_clip == 3
    assert not list((tmp_path / "output" / "MEMO").glob("*.state.safetensors"))  # complete: nothing to resume
    # the frames in the file are the sampler's frames (up to H.264)
    images, *_ = sample(loaded, vae, encoded, face)
    decoded = _decode_video(path)
    assert np.abs(decoded / 255.0 - images.numpy()).mean() < 0.05


def _decode_video(path):
    import av

    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(container.streams.video[0])]) \
            .astype(np.float32)


def test_generate_to_file_v3_node_outputs_a_native_video(loaded, vae, encoded, face, memo_host):
    """Through the V3 class: the V1 outputs first, then a VIDEO (comfy_api's VideoFromFile) of the same file."""
    node = v3_classes(memo_host)["MemoGenerateToFile"]  # skips without ComfyUI
    from comfy_api.v0_0_2 import InputImpl

    out = node.execute(memo_model=loaded["model"], vae=vae, reference_image=face[0], memo_audio=encoded[0],
                       face=face[2], seed=7, steps=1, cfg=3.5, past_frames=2, resolution=64,
                       filename_prefix="MEMO/v3")
    path, frames, state, video = out.args
    assert isinstance(video, InputImpl.VideoFromFile) and video.get_stream_source() == path
    assert video.get_dimensions() == (64, 64) and frames == 12 and state.next_clip == 3
    assert out.ui["images"][0]["filename"] == Path(path).name


def test_generate_to_file_pastes_back(loaded, vae, encoded, face, memo_host):
    odd = S.portrait(127, 131)  # odd sides: H.264 needs even, the last row/column is dropped
    image, crop, identity = run("MemoFaceCrop", loaded["face_model"], odd, 64, 2.5, 0.25, 0, "error")
    out = generate_to_file(loaded, vae, encoded, (image, crop, identity), crop=crop, original_image=odd, max_clips=1)
    info = read_video_info(out["result"][0])
    assert (info["width"], info["height"], info["frames"]) == (130, 126, 4)
    with pytest.raises(ValueError, match="'crop' and 'original_image' go together"):
        generate_to_file(loaded, vae, encoded, face, crop=crop)


def test_generate_to_file_refuses_a_track_of_another_length(loaded, vae, encoded, face, memo_host, tmp_path):
    short = {"waveform": encoded[1]["waveform"][..., : RATE // 2], "sample_rate": RATE}
    with pytest.raises(ValueError, match=r"audio: this track is 0.50 s long, but the MEMO audio is 1.20 s cut from "
                                         r"0.00 s of a 1.20 s track; connect that track .* or leave 'audio' unconnected"):
        generate_to_file(loaded, vae, encoded, face, audio=short)
    assert not list((tmp_path / "output").rglob("*.mp4"))


@pytest.fixture(scope="module")
def cut_speech(loaded):
    """2.2 s of speech and its MEMO audio cut to 1.2 s from 1 s (10 fps, clips of 4)."""
    whole = S.comfy_audio_dict(S.noisy_speech(2.2, RATE), RATE)
    with host.use_host(host.StandaloneHost()):
        memo_audio, cut, _, _ = run("MemoAudioEncode", loaded["encoder"], whole, 10.0, 4, 1.0, 0.0)
    return whole, memo_audio, cut


@pytest.mark.parametrize("connect", ["whole", "cut", "none"])
def test_generate_to_file_muxes_the_audio_under_the_frames(loaded, vae, face, memo_host, cut_speech, connect):
    """With the MEMO audio cut from 1 s, the soundtrack starts at 1 s of the source whether the node gets the
    whole track (e.g. the original mix from Load Audio), the cut one, or nothing."""
    whole, memo_audio, cut = cut_speech
    audio = {"whole": whole, "cut": cut, "none": None}[connect]
    path = generate_to_file(loaded, vae, (None, None, None), face, memo_audio=memo_audio, audio=audio,
                            reference_image=face[0], face=face[2])["result"][0]
    assert read_video_info(path)["audio_duration"] == pytest.approx(1.2, abs=0.05)
    lag, correlation = S.soundtrack_alignment(S.read_audio(path), whole["waveform"][0, :, RATE:], RATE)
    assert abs(lag) < 0.005 and correlation > 0.95, (lag, correlation)


def test_sampler_audio_output_is_the_audio_under_its_frames(loaded, vae, face, memo_host, cut_speech):
    whole, memo_audio, _ = cut_speech
    images, fps, _, audio = sample(loaded, vae, (None, None, None), face, memo_audio=memo_audio,
                                   reference_image=face[0], face=face[2], max_clips=2)
    assert images.shape[0] == 8 and audio["sample_rate"] == RATE
    assert torch.equal(audio["waveform"][0], whole["waveform"][0, :, RATE:RATE + round(8 / fps * RATE)])


def test_generate_to_file_keeps_work_when_cancelled_and_resumes(loaded, vae, encoded, face, models_root, tmp_path):
    steps = {"n": 0}

    def cancel():
        steps["n"] += 1
        return steps["n"] > 5  # clip 1 (2 steps) and clip 2 (2 steps) finish, clip 3 is cancelled

    output = tmp_path / "output"
    with host.use_host(host.StandaloneHost(models_root, output_dir=output, should_cancel=cancel)):
        with pytest.raises(GenerationCancelled):
            generate_to_file(loaded, vae, encoded, face, filename_prefix="MEMO/long")
    partial = output / "MEMO" / "long_00001_.mp4"
    state_file = output / "MEMO" / "long_00001_.state.safetensors"
    assert read_video_info(partial)["frames"] == 8 and state_file.is_file()
    assert not [p for p in (output / "MEMO").iterdir() if p.name.endswith(".part")]

    with host.use_host(host.StandaloneHost(models_root, output_dir=output)):
        from comfyui_memo.nodes import sampler as sampler_module

        assert sampler_module.state_files() == ["MEMO/long_00001_.state.safetensors"]
        (state,) = run("MemoLoadState", "MEMO/long_00001_.state.safetensors")
        assert state.next_clip == 2 and state.resolution == 64
        out = generate_to_file(loaded, vae, encoded, face, filename_prefix="MEMO/long", state=state)
        rest = read_video_info(out["result"][0])
        assert out["result"][0].endswith("long_00002_.mp4") and rest["frames"] == 4
        assert rest["audio_duration"] == pytest.approx(0.4, abs=0.05)  # the audio under the last clip only
        with pytest.raises(ValueError, match="state_file"):
            run("MemoLoadState", "../outside.state.safetensors")
        with pytest.raises(ValueError, match="state_file"):
            run("MemoLoadState", "MEMO/long_00001_.mp4")

    # a resumed run gives the same frames as an uninterrupted one
    with host.use_host(host.StandaloneHost(models_root, output_dir=tmp_path / "ref")):
        full = generate_to_file(loaded, vae, encoded, face, filename_prefix="MEMO/full")
    joined = np.concatenate([_decode_video(partial), _decode_video(out["result"][0])])
    # equal frames, compressed separately (the resumed file starts with a key frame): close on average
    assert np.abs(joined - _decode_video(full["result"][0])).mean() < 3


def test_generate_to_file_stopped_by_max_clips_says_where_the_state_is(loaded, vae, encoded, face, memo_host,
                                                                      tmp_path, caplog):
    with caplog.at_level("WARNING", logger="memo_pipeline"):
        out = generate_to_file(loaded, vae, encoded, face, max_clips=1, filename_prefix="MEMO/limited")
    video = Path(out["result"][0])
    state_file = video.with_name("limited_00001_.state.safetensors")
    assert state_file.is_file() and read_video_info(video)["frames"] == 4
    assert "stopped after clip 1 of 3 as asked" in caplog.text and str(state_file) in caplog.text
    assert "MEMO Load State" in caplog.text
    assert out["ui"]["text"] == ["stopped after clip 1 of 3 (max_clips): to continue, load "
                                 "MEMO/limited_00001_.state.safetensors with MEMO Load State"]
    assert state_file.stat().st_mode & 0o777 == video.stat().st_mode & 0o777  # the same mode (the umask's)


def test_save_state_node_round_trip(loaded, vae, encoded, face, memo_host, tmp_path):
    _, _, state, _ = sample(loaded, vae, encoded, face, max_clips=2)
    out = NODES["MemoSaveState"]().save(state, "states/run")
    path = out["result"][0]
    assert path.endswith("states/run_00001_.state.safetensors") and "after clip 2 of 3" in out["ui"]["text"][0]
    (loaded_state,) = run("MemoLoadState", "states/run_00001_.state.safetensors")
    assert loaded_state.next_clip == 2 and loaded_state.fps == 10.0 and loaded_state.frames_per_clip == 4
    torch.testing.assert_close(loaded_state.state.past_frames, state.state.past_frames)
    a, *_ = sample(loaded, vae, encoded, face, state=state)
    b, *_ = sample(loaded, vae, encoded, face, state=loaded_state)
    torch.testing.assert_close(a, b)
    state.state.save(path)  # a bare pipeline state: nothing says which audio/resolution it belongs to
    with pytest.raises(ValueError, match="not saved by comfyui-memo"):
        run("MemoLoadState", "states/run_00001_.state.safetensors")
    Path(path).write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="cannot be read"):
        run("MemoLoadState", "states/run_00001_.state.safetensors")


# ----------------------------------------------------------------------------- small helpers

def test_square_reference_is_the_official_resize():
    from PIL import Image

    wide = torch.rand(1, 64, 128, 3, generator=torch.Generator().manual_seed(0))
    square = common.square_reference(wide, 64)
    pixels = (wide[0].numpy() * 255).round().astype("uint8")
    expected = np.asarray(Image.fromarray(pixels).resize((64, 64), Image.BILINEAR), dtype=np.float32) / 255
    assert square.shape == (64, 64, 3) and torch.equal(square, torch.from_numpy(expected))
    with pytest.raises(ValueError, match="multiple of 8"):
        common.square_reference(wide, 100)


def test_describe_segments():
    labels = torch.tensor([4, 4, 3, 3, 3, 6])
    names = ("angry", "disgusted", "fearful", "happy", "neutral", "other", "sad", "surprised", "unknown")
    assert common.describe_segments(labels, 0.5, names) == "0.00-1.00 s neutral; 1.00-2.50 s happy; 2.50-3.00 s sad"


def _pack_compile_with(monkeypatch, backend):
    """Make the pack's torch_compile option compile with `backend` (no C++ compiler needed in tests)."""
    import importlib

    compile_module = importlib.import_module(PACK.__name__ + ".memo_pipeline.compile")
    inductor = compile_module.compile_diffusion_net
    monkeypatch.setattr(compile_module, "compile_diffusion_net", lambda models: inductor(models, backend=backend))


def test_generation_nodes_offer_torch_compile_off_by_default(loaded, vae, encoded, face, memo_host, monkeypatch):
    assert FROZEN["MemoSampler"]["optional"]["torch_compile"]["default"] is False  # declared as before (V3 test)
    for name in ("MemoSampler", "MemoGenerateToFile"):
        assert inspect.signature(implementation(name)).parameters["torch_compile"].default is False
    _pack_compile_with(monkeypatch, "eager")
    net = loaded["model"].models.diffusion_net
    plain = sample(loaded, vae, encoded, face)[0]
    compiled = sample(loaded, vae, encoded, face, torch_compile=True)[0]
    assert net._memo_compiled
    torch.testing.assert_close(compiled, plain, atol=1e-5, rtol=1e-5)
    sample(loaded, vae, encoded, face, torch_compile=False)
    assert not net._memo_compiled  # the cached model follows each run's own option


def test_generation_nodes_tune_cpu_runs_behind_their_own_option(loaded, vae, encoded, face, memo_host):
    """`cpu_tuning` (on by default, as the networks ran before the tuning moved out of them) applies
    and removes the CPU tuning on the cached model for each run; off gives the plain kernels' video."""
    import importlib

    tuning = importlib.import_module(PACK.__name__ + ".memo_pipeline.cpu_tuning")  # the module the nodes use
    cpu_tuning_applied, remove_cpu_tuning = tuning.cpu_tuning_applied, tuning.remove_cpu_tuning

    for name in ("MemoSampler", "MemoGenerateToFile"):
        assert inspect.signature(implementation(name)).parameters["cpu_tuning"].default is True
    models = loaded["model"].models
    tuned = sample(loaded, vae, encoded, face)[0]
    assert cpu_tuning_applied(models.diffusion_net) and cpu_tuning_applied(models.reference_net)
    plain = sample(loaded, vae, encoded, face, cpu_tuning=False)[0]
    assert not cpu_tuning_applied(models.diffusion_net) and not cpu_tuning_applied(models.reference_net)
    torch.testing.assert_close(plain, tuned, atol=2e-3, rtol=0)  # other kernels: the last bits only
    assert torch.equal(sample(loaded, vae, encoded, face, cpu_tuning=True)[0], tuned)  # reversible, exactly
    with pytest.raises(ValueError, match="cpu_tuning"):
        sample(loaded, vae, encoded, face, cpu_tuning="yes")
    remove_cpu_tuning(models)


def test_sampler_explains_a_failing_torch_compile(loaded, vae, encoded, face, memo_host, monkeypatch):
    def no_compiler(graph, example_inputs):
        raise RuntimeError("no C++ compiler here")

    _pack_compile_with(monkeypatch, no_compiler)
    torch._dynamo.reset()
    with pytest.raises(RuntimeError, match="torch_compile off"):
        sample(loaded, vae, encoded, face, torch_compile=True)
    images = sample(loaded, vae, encoded, face, torch_compile=False)[0]  # the next run without it works
    assert images.shape[0] == 12
