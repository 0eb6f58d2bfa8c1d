"""emotion2vec backbone: parity with funasr 1.0.27, checkpoint loading, config parsing, input errors."""

import json
import math
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from safetensors.torch import load_file, save_file

from memo_pipeline.audio.emotion2vec import (
    Emotion2Vec,
    Emotion2VecConfig,
    alibi_slopes,
    match_checkpoint_keys,
    parse_conv_spec,
    read_checkpoint,
)

FIXTURES = Path(__file__).parent / "fixtures" / "emotion2vec"
CASES = ["released_layout", "variants"]
NUM_WAVES = 3


def load_case(case):
    meta = json.loads((FIXTURES / f"{case}.json").read_text())
    tensors = load_file(str(FIXTURES / f"{case}.safetensors"))
    state = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    return meta, tensors, state


def build(case):
    meta, tensors, state = load_case(case)
    model = Emotion2Vec(Emotion2VecConfig.from_model_conf(meta["model_conf"])).eval()
    model.load_state_dict(match_checkpoint_keys(state, model.state_dict()), strict=True)
    return model, tensors


@pytest.mark.parametrize("case", CASES)
def test_matches_funasr_frame_and_utterance_features(case):
    model, t = build(case)
    with torch.no_grad():
        for i in range(NUM_WAVES):
            wav = t[f"in.wav{i}"]
            frames = model(F.layer_norm(wav, wav.shape)[None])[0]
            utt = model.utterance_embedding(wav)[0]
            torch.testing.assert_close(frames, t[f"out.frames{i}"], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(utt, t[f"out.utterance{i}"], atol=1e-5, rtol=1e-5)
            # funasr's own inference(granularity="utterance") feature (numpy mean) agrees as well
            torch.testing.assert_close(utt, t[f"out.inference_feats{i}"], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("case", CASES)
def test_frame_count_and_receptive_field(case):
    model, t = build(case)
    cfg = model.config
    for i in range(NUM_WAVES):
        assert cfg.num_frames(t[f"in.wav{i}"].numel()) == t[f"out.frames{i}"].shape[0]
    assert cfg.min_input_samples == 60 and cfg.num_frames(60) == 1 and cfg.num_frames(59) == 0


def test_parity_is_sensitive_to_the_alibi_scale_clamp():
    """The fixture has a negative learned ALiBi scale; ignoring the clamp must show up."""
    model, t = build("released_layout")
    scale = model.modality_encoders["AUDIO"].alibi_scale
    assert (scale < 0).any()
    with torch.no_grad():
        scale.abs_()
        utt = model.utterance_embedding(t["in.wav0"])[0]
    assert (utt - t["out.utterance0"]).abs().max() > 1e-3


def published_style_file(tmp_path, case, with_config=True):
    """A model.pt laid out like the released one: {'model': OrderedDict('d2v_model.<key>': ...)}
    plus entries MEMO never uses (classification head, optimiser-like bookkeeping)."""
    meta, _, state = load_case(case)
    weights = OrderedDict((f"d2v_model.{k}", v) for k, v in state.items())
    dim = meta["model_conf"]["embed_dim"]
    weights["proj.weight"] = torch.randn(9, dim)
    weights["proj.bias"] = torch.randn(9)
    path = tmp_path / "model.pt"
    torch.save({"model": weights, "extra_state": {"epoch": 3, "lr": [1e-4]}}, path)
    if with_config:
        conf = {"model": "Emotion2vec", "model_conf": meta["model_conf"], "scope_map": ["d2v_model.", "none"]}
        (tmp_path / "config.yaml").write_text(yaml.safe_dump(conf))
    return path


@pytest.mark.parametrize("case", CASES)
def test_from_checkpoint_reads_published_layout_and_sibling_config(tmp_path, case):
    path = published_style_file(tmp_path, case)
    model = Emotion2Vec.from_checkpoint(path)  # config.yaml next to model.pt
    _, t, _ = load_case(case)
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    with torch.no_grad():
        for i in range(NUM_WAVES):
            utt = model.utterance_embedding(t[f"in.wav{i}"])[0]
            torch.testing.assert_close(utt, t[f"out.utterance{i}"], atol=1e-5, rtol=1e-5)


def test_from_checkpoint_safetensors_and_explicit_config(tmp_path):
    meta, t, state = load_case("released_layout")
    path = tmp_path / "emotion2vec.safetensors"
    save_file({f"d2v_model.{k}": v.contiguous() for k, v in state.items()}, str(path))
    cfg = Emotion2VecConfig.from_model_conf(meta["model_conf"])
    model = Emotion2Vec.from_checkpoint(path, config=cfg)
    with torch.no_grad():
        torch.testing.assert_close(model.utterance_embedding(t["in.wav1"])[0], t["out.utterance1"], atol=1e-5, rtol=1e-5)


def test_from_checkpoint_bfloat16_runs_close_to_fp32(tmp_path):
    path = published_style_file(tmp_path, "released_layout")
    model = Emotion2Vec.from_checkpoint(path, dtype=torch.bfloat16)
    _, t, _ = load_case("released_layout")
    with torch.no_grad():
        utt = model.utterance_embedding(t["in.wav0"])[0]
    assert utt.dtype == torch.bfloat16
    assert F.cosine_similarity(utt.float(), t["out.utterance0"], dim=0) > 0.99


class NotATensor:
    pass


def test_pickled_objects_are_refused_not_unpickled(tmp_path):
    _, _, state = load_case("released_layout")
    path = tmp_path / "model.pt"
    torch.save({"model": state, "cfg": NotATensor()}, path)
    with pytest.raises(ValueError, match="weights_only"):
        read_checkpoint(path)


def test_missing_and_mismatched_weights_raise(tmp_path):
    meta, _, state = load_case("released_layout")
    cfg = Emotion2VecConfig.from_model_conf(meta["model_conf"])
    expected = Emotion2Vec(cfg).state_dict()
    partial = {k: v for k, v in state.items() if not k.startswith("blocks.1.")}
    with pytest.raises(ValueError, match=r"12 missing.*blocks\.1\."):
        match_checkpoint_keys(partial, expected)
    path = published_style_file(tmp_path, "released_layout", with_config=False)
    with pytest.raises(ValueError, match="wrong shape"):
        Emotion2Vec.from_checkpoint(path)  # no config.yaml: full-size defaults do not fit the tiny weights


def test_prefix_precedence_follows_funasr():
    meta, _, state = load_case("released_layout")
    expected = Emotion2Vec(Emotion2VecConfig.from_model_conf(meta["model_conf"])).state_dict()
    key = "blocks.0.norm1.weight"
    src = dict(state)
    src[f"d2v_model.{key}"] = state[key] + 1
    assert torch.equal(match_checkpoint_keys(src, expected)[key], state[key] + 1)
    src[f"module.{key}"] = state[key] + 2
    assert torch.equal(match_checkpoint_keys(src, expected)[key], state[key] + 2)


def test_unused_encoder_weights_are_reported(caplog):
    meta, _, state = load_case("released_layout")
    expected = Emotion2Vec(Emotion2VecConfig.from_model_conf(meta["model_conf"])).state_dict()
    src = {f"d2v_model.{k}": v for k, v in state.items()}
    src["proj.weight"] = torch.zeros(9, 32)
    with caplog.at_level("WARNING"):
        match_checkpoint_keys(src, expected)
    assert not caplog.records  # decoder and classification head are expected leftovers
    src["d2v_model.blocks.2.norm1.weight"] = torch.ones(32)
    with caplog.at_level("WARNING"):
        match_checkpoint_keys(src, expected)
    assert "blocks.2.norm1.weight" in caplog.text


def test_missing_checkpoint_file():
    with pytest.raises(FileNotFoundError):
        Emotion2Vec.from_checkpoint("/nonexistent/model.pt")


def test_default_config_is_emotion2vec_plus_large():
    cfg = Emotion2VecConfig()
    assert (cfg.embed_dim, cfg.depth, cfg.prenet_depth, cfg.num_heads) == (1024, 8, 4, 16)
    assert (cfg.num_extra_tokens, cfg.num_alibi_heads, cfg.pos_conv_kernel) == (10, 16, 19)
    assert cfg.min_input_samples == 400
    assert cfg.num_frames(32000) == 99 and cfg.num_frames(48000) == 149
    with torch.device("meta"):
        model = Emotion2Vec(cfg)
    sd = model.state_dict()
    assert sd["modality_encoders.AUDIO.alibi_scale"].shape == (1, 1, 16, 1, 1)
    assert sd["modality_encoders.AUDIO.relative_positional_encoder.5.0.weight"].shape == (1024, 64, 19)
    assert sd["modality_encoders.AUDIO.local_encoder.conv_layers.6.2.1.weight"].shape == (512,)
    assert sd["modality_encoders.AUDIO.context_encoder.blocks.3.mlp.fc1.weight"].shape == (4096, 1024)
    assert sd["blocks.7.attn.qkv.weight"].shape == (3072, 1024)


RELEASED_YAML = """
model: Emotion2vec
model_conf:
  depth: 8
  embed_dim: 1024
  layer_norm_first: false
  mlp_ratio: 4.0
  norm_affine: true
  norm_eps: 1e-05
  num_heads: 16
  modalities:
    audio:
      conv_pos_depth: 5
      conv_pos_groups: 16
      conv_pos_pre_ln: false
      conv_pos_width: 95
      extractor_mode: layer_norm
      feature_encoder_spec: '[(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512,2,2)] + [(512,2,2)]'
      learned_alibi: false
      learned_alibi_scale_per_head: true
      learned_alibi_scale_per_layer: false
      model_depth: 8
      num_alibi_heads: 16
      num_extra_tokens: 10
      prenet_depth: 4
      use_alibi_encoder: true
scope_map: ['d2v_model.', none]
"""


def test_yaml_config_parsing(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(RELEASED_YAML)  # note: YAML reads "1e-05" as a string
    assert Emotion2VecConfig.from_yaml(path) == Emotion2VecConfig()
    path.write_text(RELEASED_YAML.replace("layer_norm_first: false", "layer_norm_first: true"))
    with pytest.raises(ValueError, match="layer_norm_first"):
        Emotion2VecConfig.from_yaml(path)
    path.write_text(RELEASED_YAML.replace("learned_alibi: false", "learned_alibi: true"))
    with pytest.raises(ValueError, match="ALiBi"):
        Emotion2VecConfig.from_yaml(path)
    path.write_text(RELEASED_YAML.replace("learned_alibi_scale_per_head: true", "learned_alibi_scale_per_head: 'yes'"))
    with pytest.raises(ValueError, match="alibi_scale_per_head"):
        Emotion2VecConfig.from_yaml(path)
    path.write_text(RELEASED_YAML.replace("num_heads: 16", "num_heads: sixteen"))
    with pytest.raises(ValueError, match="num_heads"):
        Emotion2VecConfig.from_yaml(path)
    path.write_text("model: Emotion2vec\n")
    with pytest.raises(ValueError, match="model_conf"):
        Emotion2VecConfig.from_yaml(path)


def test_config_validation():
    with pytest.raises(ValueError, match="num_heads"):
        Emotion2VecConfig(embed_dim=30, num_heads=4)
    with pytest.raises(ValueError, match="num_alibi_heads"):
        Emotion2VecConfig(num_alibi_heads=32)
    with pytest.raises(ValueError, match="extractor_mode"):
        Emotion2VecConfig(extractor_mode="group_norm")
    with pytest.raises(ValueError, match="feature_encoder_spec"):
        Emotion2VecConfig(feature_encoder_spec=((512, 10),))


def test_conv_spec_parser_is_literal_only():
    released = "[(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512,2,2)] + [(512,2,2)]"
    assert parse_conv_spec(released) == Emotion2VecConfig().feature_encoder_spec
    for bad in ["__import__('os').getcwd()", "[(1, 2)]", "[(1, 2, 3)] - [(1, 2, 3)]", "[(1.5, 2, 3)]", "[(1, 2, 3)",
                "[(1, 2, 3)] * 100000000000", "[(1, 2, 3)] * 64 * 64 * 64 * 64"]:
        with pytest.raises(ValueError):
            parse_conv_spec(bad)


def test_alibi_slopes():
    assert alibi_slopes(16).tolist() == pytest.approx([2 ** (-0.5 * (i + 1)) for i in range(16)])
    assert alibi_slopes(4).tolist() == pytest.approx([2 ** (-2 * (i + 1)) for i in range(4)])
    # 12 heads: the 8-head series, then every other slope of the 16-head series
    expected = [2 ** -(i + 1) for i in range(8)] + [2 ** (-0.5 * (i + 1)) for i in range(0, 16, 2)][:4]
    assert alibi_slopes(12).tolist() == pytest.approx(expected)


def test_batched_rows_match_single_rows():
    model, t = build("released_layout")
    wav = t["in.wav0"]
    other = 0.5 * torch.sin(torch.arange(wav.numel()) / 7.0)
    with torch.no_grad():
        both = model.utterance_embedding(torch.stack([wav, other]))
        torch.testing.assert_close(both[0], model.utterance_embedding(wav)[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(both[1], model.utterance_embedding(other)[0], atol=1e-5, rtol=1e-5)


def test_bad_waveforms_give_clear_errors():
    model, _ = build("released_layout")
    with pytest.raises(ValueError, match="too short"):
        model.utterance_embedding(torch.zeros(59))
    with pytest.raises(ValueError, match="floating"):
        model.utterance_embedding(torch.zeros(1000, dtype=torch.int16))
    with pytest.raises(ValueError, match="NaN"):
        model.utterance_embedding(torch.full((1000,), math.nan))
    with pytest.raises(ValueError, match="shape"):
        model.utterance_embedding(torch.zeros(1, 1, 1000))
    with pytest.raises(ValueError, match="Tensor"):
        model.utterance_embedding([0.0] * 1000)
    with torch.no_grad():  # silence is fine: the waveform normalisation has an epsilon
        assert torch.isfinite(model.utterance_embedding(torch.zeros(1000))).all()
