"""Generate the funasr parity fixture for ``memo_pipeline.audio.emotion2vec``.

Run with a *throwaway* environment that has funasr; never install funasr into the project env:

    python3 -m venv /tmp/funasr_env
    /tmp/funasr_env/bin/pip install torch==2.13.0
    echo torch==2.13.0 > /tmp/c.txt
    /tmp/funasr_env/bin/pip install -c /tmp/c.txt funasr==1.0.27 safetensors
    /tmp/funasr_env/bin/python scripts/make_emotion2vec_fixture.py

funasr 1.0.27 is the version MEMO pins. Its emotion2vec network code is identical to FunASR git
commit 2f7dcbad9. Only ``funasr.utils.load_utils`` imports torchaudio (for file I/O, which is not
used here), and no torchaudio wheel exists for torch 2.13, so an empty stand-in module is
registered before funasr is imported.

For each tiny configuration this builds funasr's ``Emotion2vec``, gives every parameter a seeded
random value, and records:

* ``model.<key>``: funasr's full ``state_dict`` (decoder included, as in a released checkpoint);
* ``in.wav<i>``: raw float32 waveforms;
* ``out.frames<i>``: ``extract_features(layer_norm(wav))["x"][0]``, which is exactly what MEMO's
  ``extract_audio_emotion_labels`` computes before averaging;
* ``out.utterance<i>``: that averaged over time, which is what the classifier consumes;
* ``out.inference_feats<i>``: funasr's own ``inference(..., granularity="utterance")["feats"]``.
"""

import importlib.abc
import importlib.machinery
import json
import sys
import types
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file



class _EmptyTorchaudio(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Serves empty modules for ``torchaudio`` and its submodules (imported by funasr, unused here)."""

    def find_spec(self, name, path=None, target=None):
        if name == "torchaudio" or name.startswith("torchaudio."):
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None

    def create_module(self, spec):
        module = types.ModuleType(spec.name)
        module.__path__ = []
        return module

    def exec_module(self, module):
        pass


sys.meta_path.insert(0, _EmptyTorchaudio())

import funasr  # noqa: E402
from funasr.models.emotion2vec.model import Emotion2vec  # noqa: E402

OUT_DIR = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "emotion2vec"


def audio_conf(**overrides):
    """Modality settings as found in the released emotion2vec config.yaml files, shrunk."""
    conf = {
        "type": "AUDIO",
        "feature_encoder_spec": "[(16, 10, 5)] + [(16, 3, 2)] * 2 + [(16, 2, 2)]",
        "extractor_mode": "layer_norm",
        "conv_pos_width": 15,
        "conv_pos_depth": 3,
        "conv_pos_groups": 4,
        "conv_pos_pre_ln": False,
        "prenet_depth": 2,
        "prenet_layerdrop": 0.0,
        "prenet_dropout": 0.1,
        "start_drop_path_rate": 0.0,
        "end_drop_path_rate": 0.0,
        "num_extra_tokens": 3,
        "init_extra_token_zero": True,
        "use_alibi_encoder": True,
        "alibi_scale": 1.0,
        "learned_alibi": False,
        "alibi_max_pos": None,
        "learned_alibi_scale": True,
        "learned_alibi_scale_per_head": True,
        "learned_alibi_scale_per_layer": False,
        "num_alibi_heads": 4,
        "model_depth": 2,
        "local_grad_mult": 1.0,
        "mask_prob": 0.55,
        "mask_length": 5,
        "decoder": {
            "decoder_dim": 8,
            "decoder_groups": 2,
            "decoder_kernel": 3,
            "decoder_layers": 1,
            "input_dropout": 0.1,
            "add_positions_masked": False,
            "add_positions_all": False,
            "decoder_residual": True,
            "projection_layers": 1,
            "projection_ratio": 2.0,
        },
    }
    conf.update(overrides)
    return conf


def model_conf(audio, **overrides):
    conf = {
        "embed_dim": 32,
        "depth": 2,
        "num_heads": 4,
        "mlp_ratio": 4.0,
        "norm_eps": 1e-5,
        "norm_affine": True,
        "layer_norm_first": False,
        "end_of_block_targets": False,
        "encoder_dropout": 0.1,
        "attention_dropout": 0.1,
        "activation_dropout": 0.0,
        "post_mlp_drop": 0.1,
        "dropout_input": 0.0,
        "layerdrop": 0.0,
        "start_drop_path_rate": 0.0,
        "end_drop_path_rate": 0.0,
        "normalize": True,
        "modalities": {"audio": audio},
    }
    conf.update(overrides)
    return conf


CASES = {
    # Same structure as the released emotion2vec_plus_large (post-LN blocks, layer-norm conv
    # extractor, extra tokens, one learned ALiBi scale per head, odd positional kernel).
    "released_layout": {
        "seed": 1234,
        "model_conf": model_conf(audio_conf()),
    },
    # Branches that released checkpoints do not use but the architecture allows. (Pre-LN blocks,
    # ``layer_norm_first``, are left out: funasr's pre-LN block drops its MLP residual, and the
    # memo_pipeline port refuses that setting instead of copying the defect.)
    "variants": {
        "seed": 4321,
        "model_conf": model_conf(
            audio_conf(
                extractor_mode="default",
                conv_pos_width=8,  # even kernel: SamePad drops the last step
                conv_pos_depth=2,
                conv_pos_pre_ln=True,
                prenet_depth=1,
                num_extra_tokens=0,
                num_alibi_heads=2,
                learned_alibi_scale_per_layer=True,
                model_depth=3,
                decoder=None,
            ),
            depth=3,
            norm_eps=1e-2,
        ),
    },
}

# (length, amplitude, offset): includes the shortest input the tiny conv stack accepts (60 samples).
WAVES = [(3000, 0.3, 0.05), (4321, 2.0, -0.4), (60, 1.0, 0.0)]


def randomise(model, gen):
    """Seeded values for every parameter, so that no term is trivially zero or one."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("alibi_scale"):
                v = 0.6 + 0.4 * torch.randn(p.shape, generator=gen)
                v.view(-1)[0] = -0.3  # exercises clamp_min(0)
            elif name.endswith("extra_tokens"):
                v = torch.randn(p.shape, generator=gen)
            elif p.ndim >= 2:
                v = torch.randn(p.shape, generator=gen) / (p.numel() / p.shape[0]) ** 0.5
            elif name.endswith("weight"):
                v = 1 + 0.1 * torch.randn(p.shape, generator=gen)
            else:
                v = 0.1 * torch.randn(p.shape, generator=gen)
            p.copy_(v)


def main():
    torch.set_num_threads(1)
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    for case, spec in CASES.items():
        gen = torch.Generator().manual_seed(spec["seed"])
        model = Emotion2vec(model_conf=spec["model_conf"], vocab_size=-1)
        randomise(model, gen)
        model.eval()

        tensors = {f"model.{k}": v.detach().clone().contiguous() for k, v in model.state_dict().items()}
        shapes = {}
        with torch.no_grad():
            for i, (n, amp, off) in enumerate(WAVES):
                wav = (amp * torch.randn(n, generator=gen) + off).float()
                # MEMO: x = F.layer_norm(x, x.shape).view(1, -1); extract_features(x)["x"]
                frames = model.extract_features(F.layer_norm(wav, wav.shape).view(1, -1))["x"]
                results, _ = model.inference(
                    [wav.numpy()], key=[f"w{i}"], device="cpu", granularity="utterance", extract_embedding=True
                )
                tensors[f"in.wav{i}"] = wav
                tensors[f"out.frames{i}"] = frames[0].contiguous()
                tensors[f"out.utterance{i}"] = frames.mean(dim=1)[0].contiguous()
                tensors[f"out.inference_feats{i}"] = torch.from_numpy(np.asarray(results[0]["feats"])).float()
                shapes[f"wav{i}"] = {"samples": n, "frames": int(frames.shape[1])}

        save_file(tensors, str(OUT_DIR / f"{case}.safetensors"))
        meta = {
            "model_conf": spec["model_conf"],
            "seed": spec["seed"],
            "inputs": shapes,
            "versions": {"funasr": funasr.__version__, "torch": torch.__version__},
            "notes": "funasr Emotion2vec(model_conf=..., vocab_size=-1), eval, fp32, CPU, 1 thread. "
            "See scripts/make_emotion2vec_fixture.py.",
        }
        (OUT_DIR / f"{case}.json").write_text(json.dumps(meta, indent=1) + "\n")
        print(case, shapes)


if __name__ == "__main__":
    main()
