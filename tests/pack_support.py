"""Helpers for the tests that load the node pack (`import pack_support`: test_nodes, test_workflows, the live tests).

* `load_pack()` imports the repository root the way ComfyUI imports a custom node: as a package
  (named after its folder) whose `nodes/` subpackage uses relative imports.
* `comfy_nodes()` imports the pack's V3 declarations (nodes/comfy_nodes.py) with ComfyUI's real
  `comfy_api`, taken from the ComfyUI at COMFYUI_PATH: skips without one, fails with a broken one.
* `ComfyConventionVAE` stands in for ComfyUI's VAE object, which cannot be used in CI (no ComfyUI).
* `build_models_dir()` lays out every model the shipped workflows name, with tiny random weights and
  small synthetic ONNX stand-ins for the face and vocal models, under the workflow's model names.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import math
import os
import shutil
import sys
import wave
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
PACK_NAME = "comfyui_memo"

# Model names used by the shipped workflows (workflows/make_workflows.py).
MEMO_NAME = "memo"
WAV2VEC_NAME = "wav2vec2-base-960h"
EMOTION2VEC_NAME = "emotion2vec_plus_large"
VAE_FILE = "vae-ft-mse-840000-ema-pruned.safetensors"

# The synthetic SCRFD reports one face on a fixed 128x128 canvas: stride 16, cell (row 3, col 4),
# centre (64, 48); box (44, 24)-(84, 72).
DET = 128
FACE_BOX = (44.0, 24.0, 84.0, 72.0)
_KPS = np.array([[-0.5, -0.4], [0.5, -0.4], [0.0, 0.0], [-0.4, 0.6], [0.4, 0.6]])


def load_pack():
    """The repository imported like ComfyUI does it (a package), once per process."""
    if PACK_NAME in sys.modules:
        return sys.modules[PACK_NAME]
    spec = importlib.util.spec_from_file_location(PACK_NAME, REPO / "__init__.py", submodule_search_locations=[str(REPO)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[PACK_NAME] = module
    spec.loader.exec_module(module)
    return module


def comfy_nodes():
    """The pack's nodes/comfy_nodes.py, importing ComfyUI's own comfy_api from COMFYUI_PATH.

    No stand-in is ever used: without a ComfyUI the tests of the declarations skip (the work of
    every node is tested through `nodes.IMPLEMENTATIONS` without ComfyUI); a COMFYUI_PATH whose
    comfy_api does not import fails them. The ComfyUI folder goes last on sys.path, so it shadows
    nothing of ours.
    """
    import pytest

    root = os.environ.get("COMFYUI_PATH", "").strip()
    if not root:
        pytest.skip("the V3 node declarations need ComfyUI's comfy_api: set COMFYUI_PATH "
                    "(scripts/setup_comfyui.sh DIR)")
    if not (Path(root) / "comfy_api").is_dir():
        raise RuntimeError(f"COMFYUI_PATH={root} has no comfy_api/ (ComfyUI 0.8.0 or later is needed)")
    if root not in sys.path:
        sys.path.append(root)
    importlib.import_module("comfy_api.v0_0_2")
    load_pack()
    return importlib.import_module(f"{PACK_NAME}.nodes.comfy_nodes")


class ComfyConventionVAE:
    """A VAE object with ComfyUI 0.8.0's `comfy.sd.VAE` conventions, built on a diffusers AutoencoderKL.

    ComfyUI's own VAE class cannot be imported in CI (there is no ComfyUI there), so this stand-in
    reproduces its interface as read from comfy/sd.py: `encode` takes IMAGE-layout pixels
    `[N, H, W, C]` in [0, 1], crops H and W down to multiples of 8, maps to [-1, 1] and returns the
    posterior mode, unscaled, `[N, 4, H/8, W/8]` float32 on the CPU (intermediate device); `decode`
    takes unscaled latents and returns `[N, 8h, 8w, 3]` in [0, 1], clamped, on the CPU. The live
    tests check the bridge against the real class.
    """

    latent_channels = 4
    downscale_ratio = 8
    upscale_ratio = 8
    latent_dim = 2

    def __init__(self, autoencoder, output_device: str = "cpu"):
        self.first_stage_model = autoencoder.eval()
        self.output_device = torch.device(output_device)
        self.calls = {"encode": 0, "decode": 0}

    def spacial_compression_encode(self) -> int:
        return self.downscale_ratio

    @torch.no_grad()
    def encode(self, pixel_samples: torch.Tensor) -> torch.Tensor:
        self.calls["encode"] += 1
        h, w = pixel_samples.shape[1:3]
        pixels = pixel_samples[:, : h // 8 * 8, : w // 8 * 8, :3].movedim(-1, 1)
        posterior = self.first_stage_model.encode(pixels.float() * 2.0 - 1.0).latent_dist
        return posterior.mode().float().to(self.output_device)

    @torch.no_grad()
    def decode(self, samples: torch.Tensor) -> torch.Tensor:
        self.calls["decode"] += 1
        images = self.first_stage_model.decode(samples.float()).sample
        return ((images + 1.0) / 2.0).clamp(0.0, 1.0).movedim(1, -1).float().to(self.output_device)


def comfy_vae(vae_folder) -> ComfyConventionVAE:
    from diffusers import AutoencoderKL

    return ComfyConventionVAE(AutoencoderKL.from_pretrained(str(vae_folder)))


# ----------------------------------------------------------------------------- synthetic ONNX models

def _onnx():
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    return onnx, TensorProto, helper, numpy_helper


def _save_onnx(graph, path) -> str:
    onnx, _, helper, _ = _onnx()
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return str(path)


def scrfd_outputs(faces: int = 1) -> list[np.ndarray]:
    strides = (8, 16, 32)
    counts = {s: (DET // s) ** 2 * 2 for s in strides}
    outs = [np.zeros((counts[s], 1)) for s in strides] + [np.zeros((counts[s], 4)) for s in strides] \
        + [np.zeros((counts[s], 10)) for s in strides]
    if faces:
        index = (3 * (DET // 16) + 4) * 2
        outs[1][index, 0] = 0.9
        outs[4][index] = [1.25, 1.5, 1.25, 1.5]
        outs[7][index] = _KPS.ravel()
    return outs


def build_scrfd(path, faces: int = 1) -> str:
    """scrfd_10g_bnkps.onnx stand-in: fixed 128x128 input, nine outputs, `faces` (0 or 1) scripted detections."""
    _, TensorProto, helper, numpy_helper = _onnx()
    image = helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, DET, DET])
    nodes = [helper.make_node("ReduceMean", ["input.1"], ["mean"], keepdims=0),
             helper.make_node("Mul", ["mean", "zero"], ["nothing"])]
    inits = [numpy_helper.from_array(np.array(0.0, np.float32), "zero")]
    results = []
    names = [f"{kind}_{s}" for kind in ("score", "bbox", "kps") for s in (8, 16, 32)]
    for name, value in zip(names, scrfd_outputs(faces)):
        inits.append(numpy_helper.from_array(value.astype(np.float32), f"{name}_value"))
        nodes.append(helper.make_node("Add", [f"{name}_value", "nothing"], [name]))
        results.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, list(value.shape)))
    return _save_onnx(helper.make_graph(nodes, "scrfd_standin", [image], results, inits), path)


def build_arcface(path, seed: int = 7) -> str:
    """glintr100.onnx stand-in: [N, 3, 112, 112] -> 8x8 average pool -> fixed random linear map -> [N, 512]."""
    _, TensorProto, helper, numpy_helper = _onnx()
    rng = np.random.default_rng(seed)
    weight = (rng.normal(size=(588, 512)) / 10).astype(np.float32)
    bias = rng.normal(size=(512,)).astype(np.float32)
    image = helper.make_tensor_value_info("input.1", TensorProto.FLOAT, ["N", 3, 112, 112])
    embedding = helper.make_tensor_value_info("683", TensorProto.FLOAT, ["N", 512])
    nodes = [helper.make_node("AveragePool", ["input.1"], ["pooled"], kernel_shape=[8, 8], strides=[8, 8]),
             helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
             helper.make_node("MatMul", ["flat", "weight"], ["projected"]),
             helper.make_node("Add", ["projected", "bias"], ["683"])]
    inits = [numpy_helper.from_array(weight, "weight"), numpy_helper.from_array(bias, "bias")]
    return _save_onnx(helper.make_graph(nodes, "arcface_standin", [image], [embedding], inits), path)


def build_vocal_model(path, gain: float = 0.5) -> str:
    """Kim_Vocal_2.onnx stand-in with the real interface ([batch, 4, 3072, 256] -> same): spectrum x gain."""
    _, TensorProto, helper, numpy_helper = _onnx()
    spec_in = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 4, 3072, 256])
    spec_out = helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 4, 3072, 256])
    nodes = [helper.make_node("Mul", ["input", "gain"], ["output"])]
    inits = [numpy_helper.from_array(np.array(gain, np.float32), "gain")]
    return _save_onnx(helper.make_graph(nodes, "mdx_standin", [spec_in], [spec_out], inits), path)


# ----------------------------------------------------------------------------- emotion2vec

def write_tiny_emotion2vec(folder, seed: int = 3) -> Path:
    """The tiny emotion2vec of `memo_pipeline.tiny` (config.yaml + model.safetensors), through the loaded pack."""
    pack = load_pack()
    tiny = sys.modules.get(f"{pack.__name__}.memo_pipeline.tiny")
    if tiny is None:
        import importlib

        tiny = importlib.import_module(f"{pack.__name__}.memo_pipeline.tiny")
    return Path(tiny.write_tiny_emotion2vec(folder, seed)).parent


# ----------------------------------------------------------------------------- a full models folder

def build_models_dir(root, tiny_bundle: dict, with_onnx: bool = True) -> dict[str, list[str]]:
    """ComfyUI-style models/ folder with everything the shipped workflows name; returns host roots."""
    import importlib

    load_pack()
    importlib.import_module(f"{PACK_NAME}.memo_pipeline.audio.emotion2vec")
    root = Path(root)
    memo = root / "memo" / MEMO_NAME
    shutil.copytree(tiny_bundle["memo"], memo, dirs_exist_ok=True)
    shutil.copytree(tiny_bundle["wav2vec2"], root / "audio_encoders" / WAV2VEC_NAME, dirs_exist_ok=True)
    write_tiny_emotion2vec(root / "emotion2vec" / EMOTION2VEC_NAME)
    (root / "vae").mkdir(parents=True, exist_ok=True)
    if with_onnx:
        build_scrfd(memo / "misc" / "face_analysis" / "models" / "scrfd_10g_bnkps.onnx")
        build_arcface(memo / "misc" / "face_analysis" / "models" / "glintr100.onnx")
        build_vocal_model(memo / "misc" / "vocal_separator" / "Kim_Vocal_2.onnx")
    return {name: [str(root / name)] for name in ("memo", "audio_encoders", "emotion2vec", "insightface",
                                                  "vocal_separator", "vae")}


def small(prompt: dict) -> dict:
    """The shipped prompt with CI-sized sampling: 2 steps at 64x64 (everything else as shipped)."""
    prompt = json.loads(json.dumps(prompt))
    for node in prompt.values():
        if node["class_type"] in ("MemoSampler", "MemoGenerateToFile"):
            node["inputs"].update(steps=2, resolution=64)
        if node["class_type"] == "MemoFaceCrop":
            node["inputs"]["resolution"] = 64
    return prompt


# ----------------------------------------------------------------------------- media

def speech_like(seconds: float = 1.2, rate: int = 22050, channels: int = 2, seed: int = 0) -> torch.Tensor:
    """`[channels, samples]` float32: a gliding harmonic tone with a syllable-rate envelope and a little noise."""
    t = torch.arange(int(seconds * rate), dtype=torch.float64) / rate
    pitch = 140 + 40 * torch.sin(2 * math.pi * 0.7 * t)
    phase = 2 * math.pi * torch.cumsum(pitch, 0) / rate
    voice = sum(torch.sin(k * phase) / k for k in (1, 2, 3))
    envelope = 0.5 + 0.5 * torch.sin(2 * math.pi * 4 * t).clamp(min=0)
    noise = torch.from_numpy(np.random.default_rng(seed).normal(scale=0.01, size=t.numel()))
    mono = (0.3 * voice * envelope + noise).float()
    return torch.stack([mono * (1 - 0.1 * c) for c in range(channels)])


def noisy_speech(seconds: float, rate: int = 22050, seed: int = 5) -> torch.Tensor:
    """`speech_like` plus clearly audible noise: no stretch of it resembles another, so a soundtrack taken
    from the wrong place of the track shows in a cross-correlation."""
    noise = torch.from_numpy(np.random.default_rng(seed + 100).normal(scale=0.05, size=int(seconds * rate))).float()
    return speech_like(seconds, rate, seed=seed) + noise


def comfy_audio_dict(waveform: torch.Tensor, rate: int) -> dict:
    return {"waveform": waveform[None].contiguous(), "sample_rate": rate}


def write_wav(path, waveform: torch.Tensor, rate: int) -> Path:
    pcm = (waveform.clamp(-1, 1).T.numpy() * 32767).round().astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(waveform.shape[0])
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())
    return Path(path)


def portrait(height: int = DET, width: int = DET, seed: int = 0) -> torch.Tensor:
    """IMAGE `[1, H, W, 3]`: smooth colours (any content works with the scripted detector)."""
    y, x = torch.meshgrid(torch.arange(height, dtype=torch.float32), torch.arange(width, dtype=torch.float32),
                          indexing="ij")
    g = torch.Generator().manual_seed(seed)
    phase = torch.rand(3, generator=g) * 6
    rgb = torch.stack([0.5 + 0.35 * torch.sin(x / (9 + 4 * c) + y / 13 + phase[c]) for c in range(3)], -1)
    return rgb[None].contiguous()


def write_png(path, image: torch.Tensor) -> Path:
    from PIL import Image

    Image.fromarray((image[0].clamp(0, 1).numpy() * 255).round().astype(np.uint8)).save(path)
    return Path(path)


def read_png(path) -> torch.Tensor:
    """What ComfyUI's LoadImage returns for an RGB PNG: `[1, H, W, 3]` float32 / 255."""
    from PIL import Image

    with Image.open(path) as im:
        return torch.from_numpy(np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0)[None]


def read_audio(path) -> dict:
    """What ComfyUI's LoadAudio returns: `{"waveform": [1, C, T] float32, "sample_rate": int}` (decoded with PyAV)."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        channels, rate, chunks = stream.codec_context.layout.nb_channels, stream.codec_context.sample_rate, []
        for frame in container.decode(stream):
            data = frame.to_ndarray()
            if not frame.format.is_planar:
                data = data.reshape(-1, channels).T
            if data.dtype == np.int16:
                data = data.astype(np.float32) / 32768.0
            chunks.append(data.astype(np.float32))
    data = np.concatenate(chunks, axis=1)
    return {"waveform": torch.from_numpy(np.ascontiguousarray(data))[None], "sample_rate": rate}


def soundtrack_alignment(track: dict, reference: torch.Tensor, rate: int, max_lag_s: float = 1.5) -> tuple[float, float]:
    """Where `reference` (`[C, N]` at `rate`) sits in `track` (an AUDIO dict, e.g. `read_audio` of an mp4):
    (lag in seconds of the cross-correlation peak, Pearson correlation at that lag). Lag 0 with a
    correlation near 1 means the track starts with exactly that audio; lag > 0 means the track
    plays `reference` late (it starts with audio from before it)."""
    ours = track["waveform"][0].double().mean(0).numpy()
    ref = reference.double().mean(0).numpy()
    if track["sample_rate"] != rate:  # e.g. MEMO's vocal separation hands on 16 kHz
        from math import gcd

        from scipy.signal import resample_poly

        step = gcd(int(track["sample_rate"]), int(rate))
        ref = resample_poly(ref, int(track["sample_rate"]) // step, int(rate) // step)
        rate = int(track["sample_rate"])
    size = 1 << int(np.ceil(np.log2(len(ours) + len(ref))))
    corr = np.fft.irfft(np.fft.rfft(ours, size) * np.conj(np.fft.rfft(ref, size)), size)
    max_lag = int(max_lag_s * rate)
    lags = np.concatenate([np.arange(0, max_lag + 1), np.arange(-max_lag, 0)])
    best = int(lags[np.argmax(np.concatenate([corr[: max_lag + 1], corr[size - max_lag:]]))])
    a, b = (ours[best:], ref) if best >= 0 else (ours, ref[-best:])
    n = min(len(a), len(b))
    pearson = float(np.corrcoef(a[:n], b[:n])[0, 1])
    return best / rate, pearson


def json_file(path) -> dict:
    return json.loads(Path(path).read_text())
