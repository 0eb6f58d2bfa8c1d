"""The `full_pipeline` golden case: the official clip loop replayed through `MemoPipeline`.

The fixture records the initial noise of each clip, every raw diffusion-net output and every
latent after a scheduler step, the decoded clips, the second clip's reference stack and the
final cut video; all are regenerated here from the stored weights.
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler

from ..loading import MemoModels, build_model
from ..models.diffusion_net import DiffusionNet
from ..models.projections import AudioProjection, ImageProjection
from ..models.reference_net import ReferenceNet
from ..pipeline import GenerationSettings, MemoPipeline, WindowedAudio
from ..vae import DiffusersVAE
from ..cpu_tuning import set_cpu_tuning
from .fixtures import load_strict


def _load(model, tensors, prefix):
    return load_strict(model, tensors, prefix, "full_pipeline")


def build_fixture_pipeline(meta: dict, tensors: dict, vae_batch_size: int = 1, cpu_tuning: bool = False) -> MemoPipeline:
    configs = meta["configs"]
    models = MemoModels(
        reference_net=_load(build_model(ReferenceNet, configs["reference_net"], "fixture reference_net"), tensors, "model.reference_net."),
        diffusion_net=_load(build_model(DiffusionNet, configs["diffusion_net"], "fixture diffusion_net"), tensors, "model.diffusion_net."),
        image_proj=_load(ImageProjection(**configs["image_proj"]), tensors, "model.image_proj."),
        audio_proj=_load(AudioProjection(**configs["audio_proj"]), tensors, "model.audio_proj."),
    )
    vae_config = {k: v for k, v in configs["vae"].items() if not k.startswith("_")}
    vae = _load(AutoencoderKL(**vae_config), tensors, "model.vae.")
    scheduler = FlowMatchEulerDiscreteScheduler(**{k: v for k, v in configs["scheduler"].items() if not k.startswith("_")})
    pipeline = MemoPipeline(models, DiffusersVAE(vae, batch_size=vae_batch_size), scheduler)
    set_cpu_tuning(cpu_tuning, pipeline)
    return pipeline


def fixture_settings(meta: dict, **overrides) -> GenerationSettings:
    loop = meta["loop"]
    values = dict(steps=loop["inference_steps"], guidance_scale=loop["cfg_scale"],
                  frames_per_clip=loop["num_generated_frames_per_clip"], past_frames=loop["num_past_frames"],
                  init_past_frames=loop["num_init_past_frames"], seed=loop["seed"], cache_reference=False)
    values.update(overrides)
    return GenerationSettings(**values)


def run_full_pipeline_case(meta: dict, tensors: dict, vae_batch_size: int = 1, clip_constants: bool = True,
                           cpu_tuning: bool = False, **setting_overrides) -> dict:
    pipeline = build_fixture_pipeline(meta, tensors, vae_batch_size, cpu_tuning)
    settings = fixture_settings(meta, clip_constants=clip_constants, **setting_overrides)
    audio = WindowedAudio(tensors["in.audio_emb"], num_frames=meta["loop"]["audio_length"])
    out = {}

    def record(info):
        out[f"out.clip{info.clip}.step{info.step}.diffusion_net_output"] = info.model_output.clone()
        out[f"out.clip{info.clip}.step{info.step}.latents"] = info.latents.clone()

    frames_per_clip, kept = settings.frames_per_clip, []
    pixels = tensors["in.pixel_values"]
    previous = None
    for clip in pipeline.generate(pixels, tensors["in.face_emb"], audio, tensors["in.audio_emotion"], settings,
                                  on_step=record, noise=lambda k: tensors[f"in.clip{k}.init_noise"]):
        start = clip.start_frame
        window = tensors["in.audio_emb"][start:start + frames_per_clip][None]
        out[f"out.clip{clip.index}.audio_tensor"] = pipeline.models.audio_proj(window)
        out[f"out.clip{clip.index}.video"] = clip.decoded.transpose(0, 1)[None]
        if previous is not None:
            motion = previous[-settings.past_frames:] * 2.0 - 1.0
            out[f"out.clip{clip.index}.pipeline_ref_image"] = torch.cat([pixels, motion])[None]
        previous = clip.decoded
        kept.append(clip.frames)
    out["out.video"] = torch.cat(kept).transpose(0, 1)
    return out
