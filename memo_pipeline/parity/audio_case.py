"""Reproduce the ``audio_preprocess`` golden case (official ``preprocess_audio`` on a tiny wav2vec2)."""

from __future__ import annotations

import torch
from transformers import Wav2Vec2Config

from ..audio.features import Wav2Vec2AudioEncoder, extract_audio_features
from ..audio.wav2vec2_weights import build_model, normalize_state_dict
from ..cpu_tuning import set_cpu_tuning


def audio_preprocess_case(fixture_json: dict, tensors: dict[str, torch.Tensor],
                          cpu_tuning: bool = False) -> dict[str, torch.Tensor]:
    """Return the case's ``out.*`` tensors computed by this package from its ``model.*`` and ``in.waveform``
    (with `cpu_tuning`, the CPU tuning is applied to the wav2vec2 model; it finds nothing to change there)."""
    config = Wav2Vec2Config.from_dict(fixture_json["wav2vec_config"])
    weights = {key: value for key, value in tensors.items() if key.startswith("model.")}
    model = build_model(config, normalize_state_dict(weights, "audio_preprocess fixture"), "audio_preprocess fixture")
    set_cpu_tuning(cpu_tuning, model)
    encoder = Wav2Vec2AudioEncoder(model, do_normalize=fixture_json["feature_extractor"]["do_normalize"])
    call = fixture_json["call"]
    if call["sample_rate"] != 16000:
        raise ValueError(f"audio_preprocess fixture uses {call['sample_rate']} Hz; only 16 kHz input is reproduced")
    features = extract_audio_features(
        encoder,
        tensors["in.waveform"].numpy(),
        fps=call["fps"],
        frames_per_clip=call["num_generated_frames_per_clip"],
        max_pass_seconds=None,
    )
    layers = features.layer_features  # [frames, layers, hidden]
    return {
        "out.wav2vec_hidden_states": layers.permute(1, 0, 2).contiguous(),
        "out.last_hidden_state": layers[:, -1][None].contiguous(),
        "out.audio_emb": features.audio_emb,
    }
