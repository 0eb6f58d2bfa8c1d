"""Run by ComfyUI's own interpreter (not by pytest): exercise nodes/comfy_adapter.py and
ComfyUI's VAE conventions against the real ComfyUI modules, print one JSON report line.

Usage: python adapter_probe.py COMFY_DIR PACK_DIR BASE_DIR {adapter|vae}
"""
import json
import os
import sys
import traceback
import types


def boot(comfy_dir, pack_dir, base_dir):
    """Import ComfyUI as main.py would for `--cpu --base-directory BASE_DIR`, then the adapter."""
    sys.path.insert(0, comfy_dir)
    from comfy.cli_args import args
    args.cpu = True
    args.base_directory = base_dir
    import folder_paths  # noqa: F401  (reads args.base_directory at import)
    # The adapter imports its helper relatively; give it a package without running
    # the pack's __init__ (which would import every node).
    pkg = types.ModuleType("memo_probe_nodes")
    pkg.__path__ = [os.path.join(pack_dir, "nodes")]
    sys.modules["memo_probe_nodes"] = pkg
    import importlib
    return importlib.import_module("memo_probe_nodes.comfy_adapter")


def check_adapter(ad, base_dir):
    import torch
    import folder_paths
    import comfy.utils
    import comfy.model_management as mm
    out = {}

    core_audio_paths = list(folder_paths.folder_names_and_paths["audio_encoders"][0])
    ad.register_model_folders()
    ad.register_model_folders()
    fnp = folder_paths.folder_names_and_paths
    out["folders"] = {name: [list(fnp[name][0]), sorted(fnp[name][1])] for name in ad.MODEL_FOLDERS}
    out["audio_encoders_kept_core_paths"] = fnp["audio_encoders"][0][:len(core_audio_paths)] == core_audio_paths

    memo_root = os.path.join(base_dir, "models", "memo")
    for rel in ("memo-a/diffusion_net", "org/memo-c/diffusion_net", "memo-b/reference_net"):
        os.makedirs(os.path.join(memo_root, rel), exist_ok=True)
    for rel in ("memo-a", "org/memo-c"):
        with open(os.path.join(memo_root, rel, "diffusion_net", "config.json"), "w") as f:
            f.write("{}")
    out["checkpoints"] = ad.list_memo_checkpoints()
    out["resolved"] = ad.resolve_path("memo", "memo-a", "dir")
    for label, name in (("missing", "nope"), ("escape", "../../etc")):
        try:
            ad.resolve_path("memo", name)
            out[label] = "no error"
        except (FileNotFoundError, ValueError) as e:
            out[label] = f"{type(e).__name__}: {e}"

    calls = []
    comfy.utils.set_progress_bar_global_hook(
        lambda value, total, preview, node_id=None: calls.append(
            [value, total, None if preview is None else [preview[0], type(preview[1]).__name__,
                                                          list(preview[1].size), preview[2]]]))
    bar = ad.progress_bar(3)
    bar.update(1)
    bar.update(1, preview_image=torch.rand(16, 24, 3))
    bar.update(5)
    out["progress_calls"] = calls

    mm.interrupt_current_processing(True)
    try:
        ad.throw_if_interrupted()
        out["interrupt"] = "not raised"
    except mm.InterruptProcessingException:
        out["interrupt"] = "raised"
    ad.throw_if_interrupted()  # flag was consumed by the first call

    out["devices"] = [str(ad.torch_device()), str(ad.offload_device()), str(ad.intermediate_device())]
    out["dtypes"] = [str(ad.intermediate_dtype()), str(ad.model_dtype()), str(ad.vae_dtype())]

    from diffusers import AutoencoderKL
    from transformers import Wav2Vec2Config, Wav2Vec2Model
    vae = AutoencoderKL(block_out_channels=(8,), norm_num_groups=4, latent_channels=4)
    w2v = Wav2Vec2Model(Wav2Vec2Config(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                       intermediate_size=32, conv_dim=(8, 8), conv_stride=(5, 2),
                                       conv_kernel=(10, 3), num_conv_pos_embeddings=4,
                                       num_conv_pos_embedding_groups=2))
    before = len(mm.current_loaded_models)
    ad.load_models_to_gpu([vae, w2v])
    ad.load_models_to_gpu([vae])
    out["loaded_added"] = len(mm.current_loaded_models) - before
    out["is_loaded"] = [ad.is_loaded(vae), ad.is_loaded(w2v)]
    with torch.no_grad():
        out["w2v_runs"] = list(w2v(torch.zeros(1, 400)).last_hidden_state.shape)
    out["unloaded"] = ad.unload_models([vae])
    out["is_loaded_after"] = [ad.is_loaded(vae), ad.is_loaded(w2v)]
    out["vae_param_device"] = str(next(vae.parameters()).device)
    frames = torch.rand(5, 32, 48, 3)
    audio = {"waveform": torch.zeros(1, 1, 16000), "sample_rate": 16000}
    video = ad.make_video(frames, 10, audio)
    imgs, aud, fps = ad.video_parts(video)
    out["video_parts"] = [list(imgs.shape), aud["sample_rate"], fps, bool(torch.equal(imgs, frames))]
    mp4 = os.path.join(base_dir, "probe.mp4")
    video.save_to(mp4)
    from comfy_api.latest import InputImpl
    imgs, aud, fps = ad.video_parts(InputImpl.VideoFromFile(mp4))
    out["video_file_parts"] = [list(imgs.shape), None if aud is None else aud["sample_rate"], fps]
    try:
        ad.make_video(frames[0], 10)
        out["video_bad_shape"] = "no error"
    except ValueError as e:
        out["video_bad_shape"] = str(e)
    folder, filename, counter, subfolder = ad.save_path("memo/clip", 64, 64)
    out["save_path"] = [os.path.relpath(folder, base_dir), filename, counter, subfolder]
    out["output_dir"] = os.path.relpath(ad.output_directory(), base_dir)
    return out


def check_vae():
    """ComfyUI's VAE on SD1.5-architecture weights vs diffusers' AutoencoderKL."""
    import torch
    from diffusers import AutoencoderKL
    import comfy.sd
    torch.manual_seed(0)
    ref = AutoencoderKL(block_out_channels=(128, 256, 512, 512), layers_per_block=2,
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                        latent_channels=4, sample_size=64).eval()
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


def main():
    comfy_dir, pack_dir, base_dir, mode = sys.argv[1:5]
    try:
        ad = boot(comfy_dir, pack_dir, base_dir)
        report = check_adapter(ad, base_dir) if mode == "adapter" else check_vae()
    except Exception:
        report = {"error": traceback.format_exc()}
    print("PROBE-REPORT " + json.dumps(report))


if __name__ == "__main__":
    main()
