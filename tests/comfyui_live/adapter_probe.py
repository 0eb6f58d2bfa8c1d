"""Run by ComfyUI's own interpreter (not by pytest): exercise the pack's ComfyUI host
(nodes/comfy_adapter.py) and ComfyUI's VAE conventions against the real ComfyUI modules, and print
one JSON report line.

Usage: python adapter_probe.py COMFY_DIR PACK_DIR BASE_DIR {adapter|vae|vram|partial} [JSON]
"""
import importlib.util
import json
import os
import sys
import traceback

PACK = "memo_probe_pack"


def boot(comfy_dir, base_dir):
    """Import ComfyUI as main.py would for `--cpu --base-directory BASE_DIR`."""
    sys.path.insert(0, comfy_dir)
    from comfy.cli_args import args
    args.cpu = True
    args.base_directory = base_dir
    import folder_paths  # noqa: F401  (reads args.base_directory at import)


def import_pack(pack_dir):
    """The pack imported as ComfyUI imports it (a package), once."""
    if PACK in sys.modules:
        return sys.modules[PACK]
    spec = importlib.util.spec_from_file_location(PACK, os.path.join(pack_dir, "__init__.py"),
                                                  submodule_search_locations=[pack_dir])
    pack = importlib.util.module_from_spec(spec)
    sys.modules[PACK] = pack
    spec.loader.exec_module(pack)
    return pack


def comfy_extension(pack):
    """What ComfyUI gets from the pack's V3 entry: the extension and its host, after get_node_list ran."""
    import asyncio

    extension = asyncio.run(pack.comfy_entrypoint())
    asyncio.run(extension.get_node_list())
    return extension


# ---------------------------------------------------------------- helpers the checks need (ComfyUI's own API)

def loaded_patchers():
    import comfy.model_management as mm
    return [lm.model for lm in mm.current_loaded_models]


def is_loaded(host, module):
    return any(p is host.patcher(module) for p in loaded_patchers())


def unload(host, modules):
    """Offload `modules` the way ComfyUI's free_memory does; returns how many were loaded."""
    import comfy.model_management as mm
    wanted = {id(host.patcher(m)) for m in modules}
    done = 0
    for i in reversed(range(len(mm.current_loaded_models))):
        loaded = mm.current_loaded_models[i]
        if id(loaded.model) in wanted and loaded.model_unload():
            mm.current_loaded_models.pop(i)
            done += 1
    return done


def make_video(images, fps, audio=None):
    """A core VIDEO value as CreateVideo builds it."""
    from fractions import Fraction
    from comfy_api.latest import InputImpl, Types
    components = Types.VideoComponents(images=images, audio=audio, frame_rate=Fraction(round(float(fps) * 1000), 1000))
    return InputImpl.VideoFromComponents(components)


def video_parts(video):
    parts = video.get_components()
    return parts.images, parts.audio, float(parts.frame_rate)


def preview_record(call):
    value, total, preview = call
    if preview is None:
        return [value, total, None]
    return [value, total, [preview[0], type(preview[1]).__name__, list(preview[1].size), preview[2]]]


# ---------------------------------------------------------------- checks

def check_adapter(pack_dir, base_dir):
    import numpy as np
    import torch
    import folder_paths
    import latent_preview
    import comfy.latent_formats
    import comfy.utils
    import comfy.model_management as mm
    from comfy.cli_args import LatentPreviewMethod, args
    out = {}

    core_audio_paths = list(folder_paths.folder_names_and_paths["audio_encoders"][0])
    extension = comfy_extension(import_pack(pack_dir))
    from memo_probe_pack.nodes import comfy_adapter, comfy_helpers, host as host_mod
    host = extension.host
    out["host"] = [type(host).__name__, host.name, isinstance(host, comfy_adapter.ComfyHost)]
    host.register_model_folders()  # get_node_list registered them once already: idempotent
    fnp = folder_paths.folder_names_and_paths
    out["folders"] = {name: [list(fnp[name][0]), sorted(fnp[name][1])] for name in comfy_adapter.MODEL_FOLDERS}
    out["audio_encoders_kept_core_paths"] = fnp["audio_encoders"][0][:len(core_audio_paths)] == core_audio_paths

    memo_root = os.path.join(base_dir, "models", "memo")
    for rel in ("memo-a/diffusion_net", "org/memo-c/diffusion_net", "memo-b/reference_net"):
        os.makedirs(os.path.join(memo_root, rel), exist_ok=True)
    for rel in ("memo-a", "org/memo-c"):
        with open(os.path.join(memo_root, rel, "diffusion_net", "config.json"), "w") as f:
            f.write("{}")
    onnx_root = os.path.join(base_dir, "models", "vocal_separator")
    os.makedirs(os.path.join(onnx_root, "sub"), exist_ok=True)
    for rel in ("Kim_Vocal_2.onnx", "sub/other.ONNX", "notes.txt"):
        open(os.path.join(onnx_root, rel), "w").close()
    out["checkpoints"] = host.list_model_dirs("memo", comfy_helpers.MEMO_MARKER)
    out["onnx_files"] = host.list_model_files("vocal_separator", (".onnx",))
    out["unregistered_roots"] = host.model_roots("no_such_folder")
    out["resolved"] = host.resolve("memo", "memo-a", "dir")
    for label, name in (("missing", "nope"), ("escape", "../../etc")):
        try:
            host.resolve("memo", name)
            out[label] = "no error"
        except ValueError as e:
            out[label] = f"{type(e).__name__}: {e}"

    calls = []
    comfy.utils.set_progress_bar_global_hook(lambda value, total, preview, node_id=None: calls.append((value, total, preview)))
    latent = torch.randn(4, 8, 12)
    previews = {}
    for method in ("none", "latent2rgb", "taesd"):
        latent_preview.set_preview_method(method)
        calls.clear()
        bar = host.progress(3)
        bar.set(1)
        bar.set(2, preview_image=torch.rand(16, 24, 3))
        bar.set_latent(3, latent)
        bar.set(5)
        previews[method] = calls[:]
    out["progress_calls"] = {method: [preview_record(c) for c in got] for method, got in previews.items()}
    # the latent preview is exactly ComfyUI's own latent2rgb previewer on the SD1.5 format
    latent_preview.set_preview_method("latent2rgb")
    own = latent_preview.get_previewer(mm.get_torch_device(), comfy.latent_formats.SD15())
    expected = own.decode_latent_to_preview_image("JPEG", latent[None])
    out["latent2rgb_previewer"] = type(own).__name__
    out["latent2rgb_matches_core"] = bool(np.array_equal(np.asarray(previews["latent2rgb"][2][2][1]),
                                                         np.asarray(expected[1])))
    # TAESD: with a taesd_decoder in models/vae_approx, ComfyUI's TAESD previewer decodes the latent
    from safetensors.torch import save_file
    from comfy.taesd.taesd import TAESD
    torch.manual_seed(0)
    decoder = TAESD(latent_channels=4).taesd_decoder
    approx = os.path.join(base_dir, "models", "vae_approx")
    os.makedirs(approx, exist_ok=True)
    save_file({k: v.contiguous() for k, v in decoder.state_dict().items()}, os.path.join(approx, "taesd_decoder.safetensors"))
    latent_preview.set_preview_method("taesd")
    calls.clear()
    bar = host.progress(1)
    bar.set_latent(1, latent)
    out["taesd_call"] = preview_record(calls[0])
    out["taesd_previewer"] = type(bar._previewer).__name__
    latent_preview.set_preview_method(None)  # back to the default: no previews
    out["default_preview_method"] = str(args.preview_method)
    comfy.utils.set_progress_bar_global_hook(None)

    mm.interrupt_current_processing(True)
    try:
        host.check_interrupt()
        out["interrupt"] = "not raised"
    except mm.InterruptProcessingException:
        out["interrupt"] = "raised"
    host.check_interrupt()  # flag was consumed by the first call

    out["devices"] = [str(host.compute_device()), str(host.offload_device()), str(mm.intermediate_device())]
    out["dtypes"] = [str(host.model_dtype((torch.bfloat16, torch.float32))), str(host.model_dtype((torch.float32,)))]

    from diffusers import AutoencoderKL
    from transformers import Wav2Vec2Config, Wav2Vec2Model
    vae = AutoencoderKL(block_out_channels=(8,), norm_num_groups=4, latent_channels=4)
    w2v = Wav2Vec2Model(Wav2Vec2Config(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                       intermediate_size=32, conv_dim=(8, 8), conv_stride=(5, 2),
                                       conv_kernel=(10, 3), num_conv_pos_embeddings=4,
                                       num_conv_pos_embedding_groups=2))
    before = len(mm.current_loaded_models)
    host.load_to_device([vae, w2v])
    host.load_to_device([vae])
    out["loaded_added"] = len(mm.current_loaded_models) - before
    out["patchers"] = [host.patcher(vae) is host.patcher(vae), host.patcher(vae) is not host.patcher(w2v),
                       host.patcher(w2v).model.wrapped is w2v]
    out["is_loaded"] = [is_loaded(host, vae), is_loaded(host, w2v)]
    with torch.no_grad():
        out["w2v_runs"] = list(w2v(torch.zeros(1, 400)).last_hidden_state.shape)
    out["unloaded"] = unload(host, [vae])
    out["is_loaded_after"] = [is_loaded(host, vae), is_loaded(host, w2v)]
    out["vae_param_device"] = str(next(vae.parameters()).device)

    frames = torch.rand(5, 32, 48, 3)
    audio = {"waveform": torch.zeros(1, 1, 16000), "sample_rate": 16000}
    video = make_video(frames, 10, audio)
    imgs, aud, fps = video_parts(video)
    out["video_parts"] = [list(imgs.shape), aud["sample_rate"], fps, bool(torch.equal(imgs, frames))]
    mp4 = os.path.join(base_dir, "probe.mp4")
    video.save_to(mp4)
    from comfy_api.latest import InputImpl
    imgs, aud, fps = video_parts(InputImpl.VideoFromFile(mp4))
    out["video_file_parts"] = [list(imgs.shape), None if aud is None else aud["sample_rate"], fps]
    folder, filename, counter, subfolder = host.save_path("memo/clip", 64, 64)
    out["save_path"] = [os.path.relpath(folder, base_dir), filename, counter, subfolder]
    out["output_dir"] = os.path.relpath(host.output_directory(), base_dir)
    return out


SD_VAE = dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2,
              down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
              latent_channels=4, sample_size=64)


def check_vae():
    """ComfyUI's VAE on SD1.5-architecture weights vs diffusers' AutoencoderKL."""
    import torch
    from diffusers import AutoencoderKL
    import comfy.sd
    torch.manual_seed(0)
    ref = AutoencoderKL(**SD_VAE).eval()
    sd = ref.state_dict()
    cvae = comfy.sd.VAE(sd=sd)
    pixels = torch.rand(2, 64, 64, 3)  # ComfyUI IMAGE: [B,H,W,C] in 0..1
    with torch.no_grad():
        c_lat = cvae.encode(pixels)
        dist = ref.encode(pixels.movedim(-1, 1) * 2 - 1).latent_dist
        d_mode, d_std = dist.mode(), dist.std
        c_img = cvae.decode(c_lat)
        d_img = ((ref.decode(c_lat).sample + 1) / 2).clamp(0, 1).movedim(1, -1)
    fsm = cvae.first_stage_model
    return {
        "latent_shape": list(c_lat.shape),
        "encode_vs_mode_maxdiff": float((c_lat - d_mode).abs().max()),
        "encode_vs_scaled_mode_maxdiff": float((c_lat - d_mode * 0.18215).abs().max()),
        "posterior_std_mean": float(d_std.mean()),
        "decode_shape": list(c_img.shape),
        "decode_vs_diffusers_maxdiff": float((c_img - d_img).abs().max()),
        "decode_range": [float(c_img.min()), float(c_img.max())],
        "first_stage_class": f"{type(fsm).__module__}.{type(fsm).__name__}",
        "first_stage_keys_sample": sorted(fsm.state_dict())[:3],
        "has_diffusers_keys": any(k.startswith("encoder.down_blocks") for k in fsm.state_dict()),
        "vae_dtype": str(cvae.vae_dtype),
        "output_device": str(cvae.output_device),
    }


def check_vram(pack_dir, base_dir, bundle):
    """Every MEMO network is its own ModelPatcher-managed model, loaded alone right before it runs."""
    import math
    import shutil
    import torch
    import comfy.model_management as mm
    import comfy.sd
    from diffusers import AutoencoderKL

    models_dir = os.path.join(base_dir, "models")
    shutil.copytree(bundle["memo"], os.path.join(models_dir, "memo", "tiny"))
    shutil.copytree(bundle["wav2vec2"], os.path.join(models_dir, "audio_encoders", "w2v"))
    os.makedirs(os.path.join(models_dir, "emotion2vec", "e2v"))
    for name in ("model.safetensors", "config.yaml"):
        shutil.copy(os.path.join(os.path.dirname(bundle["emotion2vec"]), name), os.path.join(models_dir, "emotion2vec", "e2v"))
    extension = comfy_extension(import_pack(pack_dir))
    from memo_probe_pack.nodes import host as host_mod, implementation, memo_types
    host = extension.host

    def run(name, *args, **kwargs):
        with host_mod.use_host(host):  # as the extension's node classes run them
            result = implementation(name)(*args, **kwargs)
        return result["result"] if isinstance(result, dict) else result

    torch.manual_seed(0)
    cvae = comfy.sd.VAE(sd=AutoencoderKL(**SD_VAE).state_dict())
    (model,) = run("MemoModelLoader", "memo/tiny", "auto", "sdpa")
    (encoder,) = run("MemoAudioEncoderLoader", "audio_encoders/w2v", "fp32")
    (emotion_model,) = run("MemoEmotionModelLoader", "emotion2vec/e2v", "memo/tiny", "fp32")
    networks = dict(model.models.modules())
    networks["audio_encoder"] = encoder.networks()[0]
    networks["emotion2vec"], networks["emotion_classifier"] = emotion_model.backbone, emotion_model.classifier
    names = {id(host.patcher(net)): name for name, net in networks.items()}
    names[id(cvae.patcher)] = "vae"

    requests = []
    original = mm.load_models_gpu

    def recording(models, *args, **kwargs):
        requests.append(sorted(names.get(id(m), "other") for m in models))
        return original(models, *args, **kwargs)

    mm.load_models_gpu = recording
    out = {"dtype": model.dtype}
    out["own_patchers"] = {name: host.patcher(net).model.wrapped is net for name, net in networks.items()}
    out["distinct_patchers"] = len({id(host.patcher(net)) for net in networks.values()})

    t = torch.arange(int(0.8 * 16000), dtype=torch.float32) / 16000
    speech = (0.3 * torch.sin(2 * math.pi * 150 * t) * (0.5 + 0.5 * torch.sin(2 * math.pi * 3 * t)))[None, None]
    audio = {"waveform": speech, "sample_rate": 16000}
    requests.clear()
    memo_audio, trimmed, _, _ = run("MemoAudioEncode", encoder, audio, 10.0, 4, 0.0, 0.0)
    out["audio_requests"] = requests[:]
    requests.clear()
    emotion, _ = run("MemoEmotionDetect", emotion_model, trimmed)
    out["emotion_requests"] = requests[:]

    face = memo_types.MemoFace(torch.randn(1, model.models.face_embedding_width))
    image = torch.rand(1, 64, 64, 3)
    settings = dict(seed=3, steps=2, cfg=3.5, past_frames=2, resolution=64)
    mm.unload_all_models()
    requests.clear()
    first = run("MemoSampler", model, cvae, image, memo_audio, face, emotion=emotion, **settings)[0]
    out["sampler_requests"] = requests[:]
    out["loaded_after_run"] = sorted(names.get(id(p), "other") for p in loaded_patchers())
    out["clips"] = memo_audio.num_clips

    # a manager short of memory can offload every idle network; the next run loads them back one by one
    mm.free_memory(1e30, mm.get_torch_device())
    out["loaded_after_free"] = sorted(names.get(id(p), "other") for p in loaded_patchers())
    host.load_to_device([networks["reference_net"]])
    out["loaded_after_one"] = sorted(names.get(id(p), "other") for p in loaded_patchers())
    second = run("MemoSampler", model, cvae, image, memo_audio, face, emotion=emotion, **settings)[0]
    out["rerun_max_diff"] = float((first - second).abs().max())
    out["frames"] = list(first.shape)
    mm.load_models_gpu = original
    return out


def check_partial(pack_dir, base_dir, bundle):
    """MEMO networks built of comfy.ops layers (MEMO Model Loader inside ComfyUI), loaded in part by
    ComfyUI's ModelPatcher: the sampler's frames against a full load, and fp8 weights through the node.

    The load device of this CPU ComfyUI is the CPU, and `load_models_gpu` always loads a CPU model
    whole, so the partial load is made as `load_models_gpu` makes it on a GPU, with a budget given
    here: `LoadedModel.model_load(budget)` (ModelPatcher.partially_load -> load(lowvram_model_memory))
    for a fraction of each network's size. The layers left out get `comfy_cast_weights` and run
    ComfyUI's cast forward, as on a GPU; only the copy they make stays on the same device."""
    import shutil
    import torch
    import comfy.model_management as mm
    import comfy.sd
    from diffusers import AutoencoderKL

    models_dir = os.path.join(base_dir, "models")
    shutil.copytree(bundle["memo"], os.path.join(models_dir, "memo", "tiny"))
    shutil.copytree(bundle["wav2vec2"], os.path.join(models_dir, "audio_encoders", "w2v"))
    extension = comfy_extension(import_pack(pack_dir))
    from memo_probe_pack.memo_pipeline import cpu_tuning as tuning
    from memo_probe_pack.nodes import comfy_adapter, host as host_mod, implementation, memo_types
    comfy_host = extension.host
    fraction = float(bundle.get("fraction", 0.4))

    class PartialHost(comfy_adapter.ComfyHost):
        """ComfyHost whose model budget is `fraction` of each network instead of the free VRAM."""

        def load_to_device(self, modules):
            for module in modules:
                patcher = self.patcher(module)
                if patcher.model.model_lowvram:
                    continue  # already partially loaded (load_models_gpu would find it in its list)
                loaded = mm.LoadedModel(patcher)
                loaded.model_load(int(fraction * patcher.model_size()))
                mm.current_loaded_models.insert(0, loaded)
                comfy_adapter.place_unmanaged_tensors(patcher.model, patcher.load_device)

    partial_host = PartialHost()

    class PlainHost(comfy_adapter.ComfyHost):
        """ComfyHost without layer classes: the library's own (plain torch, or its casting layers)."""

        def layer_classes(self, weight_dtype, compute_dtype):
            return None

    plain_host = PlainHost()

    def run(host, name, *args, **kwargs):
        with host_mod.use_host(host):
            result = implementation(name)(*args, **kwargs)
        return result["result"] if isinstance(result, dict) else result

    def cast_layers(net):
        return [m for m in net.modules() if hasattr(m, "comfy_cast_weights")]

    torch.manual_seed(0)
    cvae = comfy.sd.VAE(sd=AutoencoderKL(**SD_VAE).state_dict())
    (encoder,) = run(comfy_host, "MemoAudioEncoderLoader", "audio_encoders/w2v", "fp32")
    t = torch.arange(int(0.8 * 16000), dtype=torch.float32) / 16000
    speech = (0.3 * torch.sin(2 * torch.pi * 150 * t) * (0.5 + 0.5 * torch.sin(2 * torch.pi * 3 * t)))[None, None]
    memo_audio = run(comfy_host, "MemoAudioEncode", encoder, {"waveform": speech, "sample_rate": 16000}, 10.0, 4, 0.0, 0.0)[0]
    image = torch.rand(1, 64, 64, 3)
    settings = dict(seed=3, steps=2, cfg=3.5, past_frames=2, resolution=64, max_clips=1)

    import time
    seconds = []

    def sample(host, model, **extra):
        face = memo_types.MemoFace(torch.randn(1, model.models.face_embedding_width, generator=torch.Generator().manual_seed(1)))
        start = time.monotonic()
        frames = run(host, "MemoSampler", model, cvae, image, memo_audio, face, **settings, **extra)[0]
        seconds.append(round(time.monotonic() - start, 1))
        return frames

    out = {}
    (model,) = run(comfy_host, "MemoModelLoader", "memo/tiny", "fp32", "sdpa")
    nets = model.models.modules()
    out["layer_classes"] = sorted({f"{type(m).__module__}.{type(m).__qualname__}"
                                   for net in nets.values() for m in cast_layers(net)})
    # the tensors a partial load leaves to place_unmanaged_tensors (moved to "meta" on a spare copy)
    (spare,) = run(comfy_host, "MemoModelLoader", "memo/tiny", "fp32", "sdpa")
    spare_net = spare.models.diffusion_net
    moved = comfy_adapter.place_unmanaged_tensors(spare_net, torch.device("meta"))
    out["unmanaged"] = {"moved": moved,
                        "on_meta": sorted({n.rsplit(".", 1)[-1] for n, t in list(spare_net.named_parameters())
                                           + list(spare_net.named_buffers()) if t.is_meta}),
                        "cast_layers_kept": all(not p.is_meta for m in cast_layers(spare_net) for p in m.parameters())}
    del spare, spare_net

    mm.unload_all_models()
    full = sample(comfy_host, model)
    out["full_lowvram"] = [bool(comfy_host.patcher(n).model.model_lowvram) for n in nets.values()]
    # the default output is what the library's plain torch layers give (the loader before comfy.ops)
    (plain,) = run(plain_host, "MemoModelLoader", "memo/tiny", "fp32", "sdpa")
    out["plain_layer_classes"] = sorted({type(m).__name__ for m in plain.models.diffusion_net.modules()
                                         if hasattr(m, "comfy_cast_weights")})
    out["comfy_ops_vs_plain_layers"] = float((sample(comfy_host, plain) - full).abs().max())
    del plain

    mm.unload_all_models()
    partial = sample(partial_host, model)
    report = {}
    for name, net in nets.items():
        patcher = partial_host.patcher(net)
        layers = cast_layers(net)
        streamed = [m for m in layers if m.comfy_cast_weights]
        report[name] = {"model_size": patcher.model_size(), "loaded_size": patcher.loaded_size(),
                        "lowvram": bool(patcher.model.model_lowvram), "layers": len(layers), "streamed": len(streamed),
                        "streamed_on_offload": all(p.device == patcher.offload_device
                                                   for m in streamed for p in m.parameters())}
    out["partial"] = report
    out["partial_vs_full"] = float((partial - full).abs().max())
    out["frames"] = list(full.shape)

    # what the CPU tuning did before it cast comfy layers itself: a streamed layer ran untuned
    previous = tuning.layer_weights
    tuning.layer_weights = lambda layer, x: None if getattr(layer, "comfy_cast_weights", False) else previous(layer, x)
    try:
        untuned = sample(partial_host, model)
    finally:
        tuning.layer_weights = previous
    out["partial_untuned_streamed_vs_full"] = float((untuned - full).abs().max())

    # unloading gives the streamed layers back their normal forward and the offload device
    mm.unload_all_models()
    out["after_unload"] = {name: [sum(m.comfy_cast_weights for m in cast_layers(net)),
                                  bool(comfy_host.patcher(net).model.model_lowvram)] for name, net in nets.items()}

    # fp8 weights through the node: ComfyUI's manual_cast layers; the same as the library's own casting layers
    mm.unload_all_models()
    (fp8,) = run(comfy_host, "MemoModelLoader", "memo/tiny", "fp32", "sdpa", "fp8_e4m3fn")
    fp8_net = fp8.models.diffusion_net
    out["fp8_layer_classes"] = sorted({type(m).__qualname__ for m in cast_layers(fp8_net)})
    out["fp8_weight_dtypes"] = sorted({str(m.weight.dtype) for m in cast_layers(fp8_net) if m.weight is not None})
    out["fp8_model"] = [fp8.weight_dtype, fp8.dtype]
    fp8_frames = sample(comfy_host, fp8)
    out["fp8_finite"] = bool(torch.isfinite(fp8_frames).all())
    out["fp8_vs_fp32"] = float((fp8_frames - full).abs().max())
    (library_model,) = run(plain_host, "MemoModelLoader", "memo/tiny", "fp32", "sdpa", "fp8_e4m3fn")
    out["fp8_comfy_vs_library"] = float((sample(comfy_host, library_model) - fp8_frames).abs().max())
    del library_model
    mm.unload_all_models()
    out["fp8_partial_vs_full"] = float((sample(partial_host, fp8) - fp8_frames).abs().max())
    fp8_patcher = partial_host.patcher(fp8_net)
    out["fp8_partial"] = [bool(fp8_patcher.model.model_lowvram), fp8_patcher.loaded_size() < fp8_patcher.model_size()]
    mm.unload_all_models()
    out["sampler_seconds"] = seconds
    return out


def main():
    comfy_dir, pack_dir, base_dir, mode = sys.argv[1:5]
    extra = json.loads(sys.argv[5]) if len(sys.argv) > 5 else {}
    try:
        boot(comfy_dir, base_dir)
        if mode == "adapter":
            report = check_adapter(pack_dir, base_dir)
        elif mode == "vram":
            report = check_vram(pack_dir, base_dir, extra)
        elif mode == "partial":
            report = check_partial(pack_dir, base_dir, extra)
        else:
            report = check_vae()
    except Exception:
        report = {"error": traceback.format_exc()}
    print("PROBE-REPORT " + json.dumps(report))


if __name__ == "__main__":
    main()
