"""Write tiny random-weight checkpoints in the released layouts, for tests, demos and workflow
runs on machines without the real weights.

    python -m memo_pipeline.tiny OUT_DIR [--seed N]

writes `OUT_DIR/memo/` (all five MEMO sub-models), `OUT_DIR/vae/` (a diffusers AutoencoderKL with
the SD 8x downsampling), `OUT_DIR/wav2vec2/` (a transformers Wav2Vec2Model with the real
convolutional front end, so audio runs at the real 50 Hz feature rate) and `OUT_DIR/emotion2vec/`
(our emotion2vec with the released 1024-wide features but one block, as funasr's config.yaml +
model.safetensors). The networks are the
real classes with small widths; weights are drawn from a seeded generator (no zero-initialised
layers, so every path carries signal). Their output is noise-like video: this exercises the
machinery, not the quality.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch

from .loading import COMPONENTS, MemoModels, build_model

# wav2vec2 at toy widths with the released conv front end (seven layers, a 320-sample hop).
TINY_WAV2VEC = dict(
    hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
    conv_dim=(16, 16, 16, 16, 16, 16, 16), conv_stride=(5, 2, 2, 2, 2, 2, 2), conv_kernel=(10, 3, 3, 3, 3, 2, 2),
    num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2, feat_extract_norm="group", do_stable_layer_norm=False,
    vocab_size=32, apply_spec_augment=False,
)
# Only the first three conv layers (same kernels, a 20-sample hop): a few hundred samples make frames.
SHORT_CONV = dict(conv_dim=(16, 16, 16), conv_kernel=(10, 3, 3), conv_stride=(5, 2, 2))
# The "stable layer norm" layout of wav2vec2-large (layer-normed conv front end with conv biases).
STABLE_LAYER_NORM = dict(conv_bias=True, feat_extract_norm="layer", do_stable_layer_norm=True)

TINY_UNET = dict(
    block_out_channels=[32, 32], layers_per_block=1, norm_num_groups=8, attention_head_dim=8, cross_attention_dim=24,
    in_channels=4, out_channels=4, sample_size=8, center_input_sample=False, flip_sin_to_cos=True, freq_shift=0,
    act_fn="silu", norm_eps=1e-5, downsample_padding=1, mid_block_scale_factor=1, upcast_attention=False,
    use_linear_projection=False, resnet_time_scale_shift="default",
)

TINY_CONFIGS = {
    "reference_net": dict(TINY_UNET, down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"],
                          up_block_types=["UpBlock2D", "CrossAttnUpBlock2D"], mid_block_type="UNetMidBlock2DCrossAttn"),
    "diffusion_net": dict(
        TINY_UNET, down_block_types=["CrossAttnDownBlock3D", "DownBlock3D"], up_block_types=["UpBlock3D", "CrossAttnUpBlock3D"],
        mid_block_type="UNetMidBlock3DCrossAttn", use_inflated_groupnorm=True, audio_attention_dim=16, emo_drop_rate=0.3,
        motion_module_resolutions=[1, 2, 4, 8], unet_use_cross_frame_attention=False, unet_use_temporal_attention=False,
        motion_module_kwargs=dict(num_attention_heads=8, num_transformer_block=1, attention_block_types=["Temporal_Self", "Temporal_Self"],
                                  temporal_position_encoding=True, temporal_position_encoding_max_len=32, temporal_attention_dim_div=1),
    ),
    "image_proj": dict(cross_attention_dim=24, clip_embeddings_dim=512, clip_extra_context_tokens=4),
    "audio_proj": dict(seq_len=5, blocks=TINY_WAV2VEC["num_hidden_layers"], channels=TINY_WAV2VEC["hidden_size"],
                       intermediate_dim=32, output_dim=16, context_tokens=4),
    "emotion_classifier": dict(num_classifier_layers=2, num_classifier_channels=32),
}

TINY_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, block_out_channels=[8, 8, 16, 16], layers_per_block=1, norm_num_groups=4,
    down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4, sample_size=64, scaling_factor=0.18215,
)


@torch.no_grad()
def randomize(model: torch.nn.Module, seed: int, scale: float = 1.0) -> torch.nn.Module:
    """Seeded init of every parameter: matrices N(0, 1/fan_in), norm scales 1 + 0.1 N, biases 0.1 N."""
    generator = torch.Generator().manual_seed(seed)
    for name, param in model.named_parameters():
        noise = torch.randn(param.shape, generator=generator, dtype=torch.float32)
        if param.ndim >= 2:
            value = noise * scale / math.sqrt(param.numel() / param.shape[0])
        elif name.endswith("weight"):
            value = 1 + 0.1 * noise
        else:
            value = 0.1 * noise
        param.copy_(value.to(param.dtype))
    return model


def tiny_memo_models(seed: int = 0) -> MemoModels:
    models = {}
    for i, (name, (_, cls, _)) in enumerate(COMPONENTS.items()):
        models[name] = randomize(build_model(cls, TINY_CONFIGS[name], f"tiny {name}"), seed + i).eval()
    return MemoModels(**models)


def write_tiny_memo(folder: str | Path, seed: int = 0) -> Path:
    folder = Path(folder)
    tiny_memo_models(seed).save(folder)
    return folder


def write_tiny_vae(folder: str | Path, seed: int = 100) -> Path:
    from diffusers import AutoencoderKL

    vae = randomize(AutoencoderKL(**TINY_VAE), seed, scale=0.5)
    vae.save_pretrained(folder, safe_serialization=True)
    return Path(folder)


def tiny_wav2vec2_config(stable: bool = False, **overrides):
    """The one tiny wav2vec2 configuration: `TINY_WAV2VEC`, optionally in the stable-layer-norm
    layout, with `overrides` (e.g. `**SHORT_CONV`, other widths) on top."""
    from transformers import Wav2Vec2Config

    return Wav2Vec2Config(**{**TINY_WAV2VEC, **(STABLE_LAYER_NORM if stable else {}), **overrides})


def write_tiny_wav2vec(folder: str | Path, seed: int = 200) -> Path:
    from transformers import Wav2Vec2Model

    model = randomize(Wav2Vec2Model(tiny_wav2vec2_config()), seed)
    model.save_pretrained(folder, safe_serialization=True)
    preprocessor = {"do_normalize": True, "feature_extractor_type": "Wav2Vec2FeatureExtractor", "feature_size": 1,
                    "padding_side": "right", "padding_value": 0.0, "return_attention_mask": False, "sampling_rate": 16000}
    (Path(folder) / "preprocessor_config.json").write_text(json.dumps(preprocessor, indent=2) + "\n")
    return Path(folder)


TINY_EMOTION2VEC_YAML = """\
model_conf:
  embed_dim: 1024
  depth: 1
  num_heads: 16
  mlp_ratio: 0.25
  modalities:
    audio:
      feature_encoder_spec: '[(8, 10, 5)] + [(8, 3, 2)] * 4 + [(8, 2, 2)] * 2'
      extractor_mode: layer_norm
      conv_pos_width: 3
      conv_pos_depth: 1
      conv_pos_groups: 16
      prenet_depth: 1
      num_extra_tokens: 2
      num_alibi_heads: 16
"""


def write_tiny_emotion2vec(folder: str | Path, seed: int = 300) -> Path:
    """funasr-style `config.yaml` + `model.safetensors` of a tiny emotion2vec (1024-d output, as the
    MEMO classifier expects); returns the weights file."""
    from safetensors.torch import save_file

    from .audio.emotion2vec import Emotion2Vec, Emotion2VecConfig

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(TINY_EMOTION2VEC_YAML)
    model = randomize(Emotion2Vec(Emotion2VecConfig.from_yaml(folder / "config.yaml")), seed, scale=0.5)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))
    return folder / "model.safetensors"


def write_tiny_bundle(folder: str | Path, seed: int = 0) -> dict[str, Path]:
    """`memo/`, `vae/`, `wav2vec2/` and `emotion2vec/` under `folder`; returns their paths
    (for emotion2vec, the weights file)."""
    folder = Path(folder)
    return {"memo": write_tiny_memo(folder / "memo", seed), "vae": write_tiny_vae(folder / "vae", seed + 100),
            "wav2vec2": write_tiny_wav2vec(folder / "wav2vec2", seed + 200),
            "emotion2vec": write_tiny_emotion2vec(folder / "emotion2vec", seed + 300)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m memo_pipeline.tiny", description="Write tiny random-weight checkpoints.")
    parser.add_argument("out_dir")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for name, path in write_tiny_bundle(args.out_dir, args.seed).items():
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
