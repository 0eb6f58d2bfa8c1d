"""The ComfyUI nodes, without ComfyUI: declarations vs. behaviour, loaders, audio/emotion/face nodes,
the VAE bridge, previews, the sampler (progress, cancel, resume) and the streaming writer.

Everything runs on tiny random checkpoints at 64x64 with a few steps; the pack is imported the
way ComfyUI imports it (see test_nodes_support.load_pack) and runs on a StandaloneHost whose model
roots point at a temporary models/ folder.
"""

import importlib.util
import inspect
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

_spec = importlib.util.spec_from_file_location("memo_nodes_support", Path(__file__).with_name("test_nodes_support.py"))
S = sys.modules.get("memo_nodes_support")
if S is None:
    S = importlib.util.module_from_spec(_spec)
    sys.modules["memo_nodes_support"] = S
    _spec.loader.exec_module(S)

PACK = S.load_pack()
from comfyui_memo.memo_pipeline.pipeline import GenerationCancelled  # noqa: E402
from comfyui_memo.memo_pipeline.vae import DiffusersVAE  # noqa: E402
from comfyui_memo.memo_pipeline.video_io import read_video_info  # noqa: E402
from comfyui_memo.nodes import common, host, memo_types, preview, vae_bridge  # noqa: E402

NODES = PACK.NODE_CLASS_MAPPINGS
NATIVE_TYPES = {"IMAGE", "AUDIO", "VAE", "INT", "FLOAT", "STRING", "BOOLEAN"}
HAAR = "opencv-haar (crop only, no identity)"


def run(node_name, *args, **kwargs):
    cls = NODES[node_name]
    out = getattr(cls(), cls.FUNCTION)(*args, **kwargs)
    return out["result"] if isinstance(out, dict) else out


# ----------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def models_root(tmp_path_factory, tiny_bundle):
    pytest.importorskip("onnx")
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

def _declared_inputs(cls):
    spec = cls.INPUT_TYPES()
    assert set(spec) <= {"required", "optional", "hidden"}, cls
    return spec.get("required", {}), spec.get("optional", {})


@pytest.mark.parametrize("name", sorted(NODES))
def test_node_declarations_are_complete_and_consistent(name, memo_host):
    cls = NODES[name]
    display = PACK.NODE_DISPLAY_NAME_MAPPINGS[name]
    assert display.startswith("MEMO ") and cls.CATEGORY.split("/")[0] == "MEMO"
    assert isinstance(cls.DESCRIPTION, str) and len(cls.DESCRIPTION) > 40
    required, optional = _declared_inputs(cls)
    for input_name, entry in {**required, **optional}.items():
        assert isinstance(entry, tuple) and 1 <= len(entry) <= 2, (name, input_name)
        kind = entry[0]
        assert isinstance(kind, list) or kind in NATIVE_TYPES or kind.startswith("MEMO_"), (name, input_name, kind)
        assert entry[1].get("tooltip"), f"{name}.{input_name} has no tooltip"
        if kind in ("INT", "FLOAT"):
            opts = entry[1]
            assert opts["min"] <= opts["default"] <= opts["max"], (name, input_name)
        if isinstance(kind, list) and "default" in entry[1]:
            assert entry[1]["default"] in kind, (name, input_name)
    for kind in cls.RETURN_TYPES:  # our objects never masquerade as native types
        assert kind in NATIVE_TYPES or kind.startswith("MEMO_"), (name, kind)
    assert len(cls.RETURN_NAMES) == len(cls.RETURN_TYPES) == len(cls.OUTPUT_TOOLTIPS)
    function = getattr(cls, cls.FUNCTION)
    params = inspect.signature(function).parameters
    for input_name in {**required, **optional}:
        assert input_name in params, f"{name}.{cls.FUNCTION} does not accept '{input_name}'"
    for input_name, param in params.items():
        if input_name == "self":
            continue
        hidden = cls.INPUT_TYPES().get("hidden", {})
        assert input_name in required or input_name in optional or input_name in hidden, \
            f"{name}: parameter {input_name} is not declared"
        if input_name in optional or input_name in hidden:
            assert param.default is not inspect.Parameter.empty, f"optional {name}.{input_name} needs a default"
    assert not hasattr(cls, "IS_CHANGED") or name == "MemoLoadState", "loaders must be cached by ComfyUI"


def test_root_package_exports_all_nodes():
    expected = {"MemoModelLoader", "MemoAudioEncoderLoader", "MemoAudioEncode", "MemoEmotionModelLoader",
                "MemoEmotionDetect", "MemoEmotionSchedule", "MemoVocalSeparation", "MemoFaceModelLoader",
                "MemoFaceCrop", "MemoFaceEmbed", "MemoPasteBack", "MemoSampler", "MemoGenerateToFile",
                "MemoSaveState", "MemoLoadState"}
    assert set(NODES) == expected == set(PACK.NODE_DISPLAY_NAME_MAPPINGS)
    assert not host.in_comfyui()  # CI has no ComfyUI: comfy_adapter cannot import, the standalone host is used


def test_root_init_outside_a_package_registers_nothing():
    import runpy

    assert runpy.run_path(str(S.REPO / "__init__.py"))["NODE_CLASS_MAPPINGS"] == {}
    spec = importlib.util.spec_from_file_location("loose_memo_init", S.REPO / "__init__.py")
    module = importlib.util.module_from_spec(spec)  # not registered in sys.modules
    spec.loader.exec_module(module)
    assert module.NODE_CLASS_MAPPINGS == {} and module.NODE_DISPLAY_NAME_MAPPINGS == {}


def test_nodes_package_never_imports_comfyui_directly():
    """Only comfy_adapter.py may import ComfyUI; nothing may import ComfyUI's top-level `nodes` absolutely."""
    import ast

    banned = {"comfy", "comfy_extras", "comfy_api", "folder_paths", "nodes", "server", "execution", "latent_preview"}
    for path in list((S.REPO / "nodes").glob("*.py")) + [S.REPO / "__init__.py"]:
        if path.name == "comfy_adapter.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                roots = {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                roots = {(node.module or "").split(".")[0]}
            else:
                continue
            assert not roots & banned, f"{path.name}:{node.lineno} imports {roots & banned}"


# ----------------------------------------------------------------------------- host

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
    spec = NODES["MemoModelLoader"].INPUT_TYPES()["required"]
    assert spec["checkpoint"][0] == ["memo/memo"]


# ----------------------------------------------------------------------------- loaders

def test_model_loader_outputs(loaded):
    model = loaded["model"]
    assert isinstance(model, memo_types.MemoModel) and model.dtype == "fp32" and model.attention == "sdpa"
    assert model.models.emotion_classifier is None  # the emotion loader brings its own
    assert {p.dtype for m in model.modules() for p in m.parameters()} == {torch.float32}


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


@pytest.mark.parametrize("audio, kwargs, message", [
    ({"waveform": torch.zeros(1, 1, RATE), "sample_rate": RATE}, {}, r"audio: the track is silent"),
    ({"waveform": torch.full((1, 1, RATE), 1e-6), "sample_rate": RATE}, {}, r"nearly silent"),
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
    (vocals,) = run("MemoVocalSeparation", speech, "memo/memo/misc/vocal_separator/Kim_Vocal_2.onnx", False)
    assert vocals["sample_rate"] == RATE and vocals["waveform"].shape == speech["waveform"].shape
    # the stand-in model halves the spectrum and the level is kept, so the stem is about half the mix
    ratio = vocals["waveform"].std() / speech["waveform"].std()
    assert 0.35 < float(ratio) < 0.65
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
    pytest.importorskip("onnx")
    from comfyui_memo.memo_pipeline.face import FaceAnalyzer

    det = S.build_scrfd(tmp_path / "none.onnx", faces=0)
    rec = S.build_arcface(tmp_path / "rec.onnx")
    blind = memo_types.MemoFaceModel(FaceAnalyzer(det, rec, providers=["CPUExecutionProvider"]), "blind")
    with pytest.raises(ValueError, match="image: no face found"):
        run("MemoFaceCrop", blind, S.portrait(), 64, 2.5, 0.25, 0, "error")
    image, crop, identity = run("MemoFaceCrop", blind, S.portrait(96, 128), 64, 2.5, 0.25, 0, "continue without identity")
    assert image.shape == (1, 64, 64, 3) and crop.size == 128 and identity.embedding.abs().sum() == 0
    (identity,) = run("MemoFaceEmbed", blind, S.portrait(), 0, "continue without identity")
    assert identity.embedding.abs().sum() == 0 and identity.note
    with pytest.raises(ValueError, match="face index 1 requested"):
        run("MemoFaceEmbed", loaded["face_model"], S.portrait(), 1, "error")
    with pytest.raises(ValueError, match="batch of 2 images"):
        run("MemoFaceEmbed", loaded["face_model"], torch.rand(2, 64, 64, 3), 0, "error")


def test_haar_face_model_crops_without_identity(memo_host):
    (haar,) = run("MemoFaceModelLoader", HAAR, 640, "cpu")
    assert not haar.can_embed


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
    image = preview.step_preview(latents, velocity, 0.25)
    x0 = latents[0, :, 1] - 0.25 * velocity[0, :, 1]
    expected = ((torch.einsum("chw,cr->hwr", x0, preview.SD15_LATENT_RGB_FACTORS) + 1) / 2).clamp(0, 1)
    torch.testing.assert_close(image, expected)


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
    assert bar.preview is not None and bar.preview.shape[-1] == 3
    assert memo_host.loaded  # the networks went through the host's model management


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
    ({"resolution": 68}, r"input 'resolution' must be a multiple of 8"),
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


def test_generate_to_file_pastes_back(loaded, vae, encoded, face, memo_host):
    odd = S.portrait(127, 131)  # odd sides: H.264 needs even, the last row/column is dropped
    image, crop, identity = run("MemoFaceCrop", loaded["face_model"], odd, 64, 2.5, 0.25, 0, "error")
    out = generate_to_file(loaded, vae, encoded, (image, crop, identity), crop=crop, original_image=odd, max_clips=1)
    info = read_video_info(out["result"][0])
    assert (info["width"], info["height"], info["frames"]) == (130, 126, 4)
    with pytest.raises(ValueError, match="'crop' and 'original_image' go together"):
        generate_to_file(loaded, vae, encoded, face, crop=crop)


def test_generate_to_file_refuses_audio_shorter_than_the_video(loaded, vae, encoded, face, memo_host, tmp_path):
    short = {"waveform": encoded[1]["waveform"][..., : RATE // 2], "sample_rate": RATE}
    with pytest.raises(ValueError, match=r"audio: 0.50 s from frame 0 on, but the video needs 1.10 s"):
        generate_to_file(loaded, vae, encoded, face, audio=short)
    assert not list((tmp_path / "output").rglob("*.mp4"))


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
        assert NODES["MemoLoadState"].INPUT_TYPES()["required"]["state_file"][0] == ["MEMO/long_00001_.state.safetensors"]
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

def test_square_reference_centre_crops():
    wide = torch.zeros(1, 64, 128, 3)
    wide[:, :, 32:96] = 1.0
    square = common.square_reference(wide, 64)
    assert square.shape == (64, 64, 3) and torch.allclose(square, torch.ones(64, 64, 3))
    with pytest.raises(ValueError, match="multiple of 8"):
        common.square_reference(wide, 100)


def test_describe_segments():
    labels = torch.tensor([4, 4, 3, 3, 3, 6])
    names = ("angry", "disgusted", "fearful", "happy", "neutral", "other", "sad", "surprised", "unknown")
    assert common.describe_segments(labels, 0.5, names) == "0.00-1.00 s neutral; 1.00-2.50 s happy; 2.50-3.00 s sad"
