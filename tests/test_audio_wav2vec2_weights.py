import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from transformers import Wav2Vec2ForCTC, Wav2Vec2Model

from memo_pipeline.audio.features import Wav2Vec2AudioEncoder, extract_audio_features
from memo_pipeline.audio.wav2vec2_weights import Wav2Vec2WeightsError, infer_config, load_wav2vec2, normalize_state_dict
from memo_pipeline.tiny import SHORT_CONV, tiny_wav2vec2_config


def tiny_config(stable=False, **overrides):
    """Tiny but published-layout wav2vec2: kernels 10/3/3 with strides 5/2/2, 64-dim heads."""
    values = dict(SHORT_CONV, hidden_size=128, intermediate_size=64, num_conv_pos_embedding_groups=4, vocab_size=12)
    return tiny_wav2vec2_config(stable, **{**values, **overrides})


def seeded(model, seed=0):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(0.2 * torch.randn(param.shape, generator=generator))
    return model.eval()


def legacy_weight_norm_names(state_dict, prefix=""):
    """Rename the parametrized positional-conv weight norm to the older weight_g / weight_v names."""
    out = {}
    for key, value in state_dict.items():
        key = key.replace("parametrizations.weight.original0", "weight_g").replace("parametrizations.weight.original1", "weight_v")
        out[prefix + key] = value.contiguous()
    return out


def features_of(model):
    samples = np.sin(np.arange(8000) / 7.0).astype(np.float32)
    return extract_audio_features(Wav2Vec2AudioEncoder(model), samples, fps=25, frames_per_clip=None).layer_features


def test_hf_folder_with_safetensors_and_preprocessor_config(tmp_path):
    reference = seeded(Wav2Vec2Model(tiny_config()))
    reference.save_pretrained(tmp_path)
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({"do_normalize": False, "sampling_rate": 16000}))
    model, do_normalize = load_wav2vec2(tmp_path)
    assert do_normalize is False
    torch.testing.assert_close(features_of(model), features_of(reference))


def test_ctc_folder_with_pytorch_bin_legacy_names_and_lm_head(tmp_path):
    ctc = seeded(Wav2Vec2ForCTC(tiny_config()), seed=1)
    ctc.config.to_json_file(tmp_path / "config.json")
    state = legacy_weight_norm_names(ctc.state_dict())
    assert "wav2vec2.encoder.pos_conv_embed.conv.weight_g" in state and "lm_head.weight" in state
    torch.save(state, tmp_path / "pytorch_model.bin")
    model, do_normalize = load_wav2vec2(tmp_path)
    assert do_normalize is True
    torch.testing.assert_close(features_of(model), features_of(ctc.wav2vec2))


@pytest.mark.parametrize("stable", [False, True])
@pytest.mark.parametrize("prefix", ["", "wav2vec2."])
def test_single_comfyui_style_file_infers_the_config(tmp_path, stable, prefix):
    reference = seeded(Wav2Vec2Model(tiny_config(stable=stable)), seed=2)
    state = {key: value.half() for key, value in legacy_weight_norm_names(reference.state_dict(), prefix).items()}
    path = tmp_path / "wav2vec2_tiny_fp16.safetensors"
    save_file(state, path)
    model, _ = load_wav2vec2(path)
    config = model.config
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (128, 2, 2)
    assert list(config.conv_stride) == [5, 2, 2] and config.conv_bias == stable
    assert config.do_stable_layer_norm == stable
    assert (config.num_conv_pos_embeddings, config.num_conv_pos_embedding_groups) == (16, 4)
    rounded = Wav2Vec2Model(tiny_config(stable=stable))
    rounded.load_state_dict({k: v.half().float() for k, v in reference.state_dict().items()})
    torch.testing.assert_close(features_of(model), features_of(rounded.eval()))


def test_from_pretrained_moves_to_dtype(tmp_path):
    seeded(Wav2Vec2Model(tiny_config())).save_pretrained(tmp_path)
    encoder = Wav2Vec2AudioEncoder.from_pretrained(tmp_path, device="cpu", dtype=torch.bfloat16)
    assert encoder.dtype == torch.bfloat16 and encoder.source == str(tmp_path)
    features = extract_audio_features(encoder, np.sin(np.arange(8000) / 5.0).astype(np.float32))
    assert features.layer_features.dtype == torch.float32 and torch.isfinite(features.layer_features).all()


def test_missing_tensor_is_reported_with_the_file(tmp_path):
    state = seeded(Wav2Vec2Model(tiny_config())).state_dict()
    del state["encoder.layers.1.feed_forward.output_dense.weight"]
    path = tmp_path / "broken.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, path)
    with pytest.raises(Wav2Vec2WeightsError, match="broken.safetensors.*missing 1 tensors: encoder.layers.1.feed_forward.output_dense.weight"):
        load_wav2vec2(path)


def test_unexpected_and_mismatched_tensors_are_reported(tmp_path):
    reference = seeded(Wav2Vec2Model(tiny_config()))
    reference.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["intermediate_size"] = 96
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(Wav2Vec2WeightsError, match="shape mismatch.*intermediate_dense.weight: file \\(64, 128\\) vs model \\(96, 128\\)"):
        load_wav2vec2(tmp_path)

    state = {k: v.contiguous() for k, v in reference.state_dict().items()}
    state["encoder.layers.0.extra.weight"] = torch.zeros(3)
    path = tmp_path / "extra.safetensors"
    save_file(state, path)
    with pytest.raises(Wav2Vec2WeightsError, match="extra.safetensors.*unexpected 1 tensors: encoder.layers.0.extra.weight"):
        load_wav2vec2(path)

    state.pop("encoder.layers.0.extra.weight")
    prefixed = {"wav2vec2." + k: v for k, v in state.items()}
    prefixed["text_model.embeddings.weight"] = torch.zeros(3)
    save_file(prefixed, path)
    with pytest.raises(Wav2Vec2WeightsError, match="unexpected tensor 'text_model.embeddings.weight' outside the 'wav2vec2.'"):
        load_wav2vec2(path)


def test_not_a_wav2vec2_file_or_folder(tmp_path):
    other = tmp_path / "unet.safetensors"
    save_file({"conv_in.weight": torch.zeros(4, 4, 3, 3)}, other)
    with pytest.raises(Wav2Vec2WeightsError, match="unet.safetensors is not a wav2vec2 checkpoint"):
        load_wav2vec2(other)

    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(Wav2Vec2WeightsError, match="cannot read wav2vec2 weights .*corrupt.safetensors"):
        load_wav2vec2(corrupt)

    empty_folder = tmp_path / "empty"
    empty_folder.mkdir()
    with pytest.raises(Wav2Vec2WeightsError, match="has no config.json"):
        load_wav2vec2(empty_folder)

    hubert = tmp_path / "hubert"
    hubert.mkdir()
    (hubert / "config.json").write_text(json.dumps({"model_type": "hubert"}))
    with pytest.raises(Wav2Vec2WeightsError, match="model_type is 'hubert'"):
        load_wav2vec2(hubert)

    weightless = tmp_path / "weightless"
    weightless.mkdir()
    tiny_config().to_json_file(weightless / "config.json")
    with pytest.raises(Wav2Vec2WeightsError, match="has no model.safetensors"):
        load_wav2vec2(weightless)

    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_wav2vec2(tmp_path / "nowhere")


def test_pickle_with_code_is_refused(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("this must never run",))

    path = tmp_path / "pytorch_model.bin"
    torch.save({"x": Payload()}, path)
    tiny_config().to_json_file(tmp_path / "config.json")
    with pytest.raises(Wav2Vec2WeightsError, match="cannot read wav2vec2 weights"):
        load_wav2vec2(tmp_path)


def test_unusual_kernels_need_a_config(tmp_path):
    state = normalize_state_dict(
        {k: v for k, v in Wav2Vec2Model(tiny_config(conv_kernel=(10, 4, 4), conv_stride=(5, 4, 4))).state_dict().items()},
        "x",
    )
    with pytest.raises(Wav2Vec2WeightsError, match="kernel sizes \\[4\\].*config.json"):
        infer_config(state, "odd.safetensors")
