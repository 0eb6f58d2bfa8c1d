"""`models check`: every supported layout is found and verified, every kind of broken file is named."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from memo_pipeline import model_files as mf
from memo_pipeline.cli import main
from model_trees import loopback_only, repo_contents, write_release_tree, write_tiny_vae_single_file  # noqa: F401

from support import need  # noqa: E402

need("onnx")


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> Path:
    return write_release_tree(tmp_path_factory.mktemp("release") / "models")


@pytest.fixture
def tree(release, tmp_path) -> Path:
    """A private copy of the release tree that a test may break."""
    return Path(shutil.copytree(release, tmp_path / "models"))


def run_check(capsys, *args) -> tuple[int, str]:
    code = main(["models", "check", *map(str, args)])
    return code, capsys.readouterr().out


def status(models, key) -> mf.ItemStatus:
    return mf.check_item(mf.ITEMS_BY_KEY[key], models)


# ------------------------------------------------------------------ layouts

def test_release_tree_passes_with_every_feature(release, capsys):
    code, out = run_check(capsys, "--models", release)
    assert code == 0
    for feature in mf.FEATURES:
        assert any(line.startswith(feature) and " OK " in line for line in out.splitlines()), out
    assert out.count("[found   ]") == len(mf.ITEMS)
    assert "DiffusionNet, 606 tensors match config.json" in out


def test_comfyui_folder_option(release, tmp_path, capsys):
    comfy = tmp_path / "ComfyUI"
    comfy.mkdir()
    os.symlink(release, comfy / "models")
    code, out = run_check(capsys, "--comfyui", comfy)
    assert code == 0 and f"model folder: {comfy / 'models'}" in out


def test_missing_core_fails_and_says_where_to_put_it(tmp_path, capsys):
    (tmp_path / "models").mkdir()
    code, out = run_check(capsys, "--models", tmp_path / "models")
    assert code == 1
    assert "[missing ] core    MEMO diffusion net" in out
    assert f"should be at {tmp_path / 'models/memo/memo/diffusion_net'}" in out
    assert "looked in:" in out and "core generation cannot run" in out
    assert "models fetch --models" in out


def test_optional_features_missing_still_exit_zero(tree, capsys):
    shutil.rmtree(tree / "emotion2vec")
    shutil.rmtree(tree / "memo/memo/misc")
    code, out = run_check(capsys, "--models", tree, "--quiet")
    assert code == 0
    assert out.count("MISSING") == 3 and "core     OK" in out


def test_comfyui_layouts_diffusers_vae_named_checkpoint_antelopev2_vocal_folder(tree):
    from memo_pipeline.tiny import write_tiny_vae

    (tree / "vae" / mf.VAE_FILE).unlink()
    write_tiny_vae(tree / "vae/sd-vae-ft-mse")
    (tree / "memo/memo").rename(tree / "memo/memo-release")
    face = tree / "memo/memo-release/misc/face_analysis/models"
    antelope = tree / "insightface/models/antelopev2"
    antelope.parent.mkdir(parents=True)
    face.rename(antelope)
    (tree / "vocal_separator").mkdir()
    (tree / "memo/memo-release/misc/vocal_separator" / mf.KIM_VOCAL_FILE).rename(tree / "vocal_separator" / mf.KIM_VOCAL_FILE)
    report = mf.check_models(tree)
    assert report.exit_code == 0, mf.format_report(report)
    where = {s.item.key: s.path for s in report.items}
    assert where["vae"] == tree / "vae/sd-vae-ft-mse"
    assert where["diffusion_net"] == tree / "memo/memo-release/diffusion_net"
    assert where["face_detector"] == antelope / mf.DETECTOR_FILE
    assert where["vocal_separator"] == tree / "vocal_separator" / mf.KIM_VOCAL_FILE


def test_single_file_wav2vec2_in_audio_encoders(tree):
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    shutil.rmtree(tree / mf.WAV2VEC_DIR)
    # the single-file layout infers the config from shapes, which needs 64-wide heads: hidden 64, one layer
    config = Wav2Vec2Config(hidden_size=64, num_hidden_layers=1, num_attention_heads=1, intermediate_size=32,
                            conv_dim=(8,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4)
    model = Wav2Vec2Model(config)
    tensors = {f"wav2vec2.{k}": v.contiguous() for k, v in model.state_dict().items()}
    save_file({"encoder.weight": torch.zeros(2)}, str(tree / "audio_encoders/a_whisper.safetensors"))  # not a wav2vec2
    save_file(tensors, str(tree / "audio_encoders/speech_encoder_base.safetensors"))
    found = status(tree, "wav2vec2")
    assert found.ok, found.detail
    assert found.path == tree / "audio_encoders/speech_encoder_base.safetensors"
    assert "hidden 64 x 1 layers" in found.detail


def _hf_cache(repos: dict[str, dict[str, bytes]], cache: Path) -> Path:
    """A Hugging Face hub cache: blobs by hash, snapshots/<commit>/ symlinks, refs/main."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    for repo_id, files in repos.items():
        repo = cache / ("models--" + repo_id.replace("/", "--"))
        (repo / "refs").mkdir(parents=True)
        (repo / "refs/main").write_text(commit)
        (repo / "blobs").mkdir()
        for name, data in files.items():
            blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
            blob.write_bytes(data)
            link = repo / "snapshots" / commit / name
            link.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(os.path.relpath(blob, link.parent), link)
    return cache


def test_hugging_face_cache_as_the_models_folder(release, tmp_path, capsys):
    cache = _hf_cache(repo_contents(release), tmp_path / "hub")
    code, out = run_check(capsys, "--models", cache)
    assert code == 0, out
    assert "models--memoavatar--memo/snapshots/0123456789abcdef0123456789abcdef01234567/diffusion_net" in out


def test_hugging_face_cache_inside_a_comfyui_model_folder(tree, tmp_path):
    repos = repo_contents(tree)
    shutil.rmtree(tree / mf.WAV2VEC_DIR)
    _hf_cache({mf.WAV2VEC_SOURCE.repo_id: repos[mf.WAV2VEC_SOURCE.repo_id]}, tree / "audio_encoders")
    found = status(tree, "wav2vec2")
    assert found.ok and "models--facebook--wav2vec2-base-960h/snapshots" in os.fspath(found.path)


# ------------------------------------------------------------------ broken files

def _rewrite(path: Path, edit) -> None:
    tensors, metadata = load_file(str(path)), mf.safetensors_metadata(path)
    edit(tensors)
    save_file(tensors, str(path), metadata=metadata or None)


def _expect_broken(models, key, *needles, capsys=None):
    found = status(models, key)
    assert found.status == "unusable", found
    for needle in needles:
        assert needle in found.detail, found.detail
    return found


WEIGHTS = "memo/memo/diffusion_net/diffusion_pytorch_model.safetensors"


def test_truncated_safetensors(tree, capsys):
    path = tree / WEIGHTS
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    found = _expect_broken(tree, "diffusion_net", "truncated download")
    assert found.size == len(data) // 2 + (path.parent / "config.json").stat().st_size
    code, out = run_check(capsys, "--models", tree)
    assert code == 1 and "[unusable] core    MEMO diffusion net" in out and "BROKEN" in out


def test_not_a_safetensors_file(tree):
    (tree / "memo/memo/image_proj/diffusion_pytorch_model.safetensors").write_bytes(b"<html>404 Not Found</html>" * 10)
    _expect_broken(tree, "image_proj", "not a safetensors file")


def test_weights_that_do_not_fit_the_config(tree):
    config_path = tree / "memo/memo/audio_proj/config.json"
    config = json.loads(config_path.read_text())
    config["output_dim"] = 24
    config_path.write_text(json.dumps(config))
    _expect_broken(tree, "audio_proj", "does not match AudioProjection", "shape mismatches")


def test_missing_and_unexpected_tensors(tree):
    def drop_and_add(tensors):
        tensors.pop(sorted(tensors)[0])
        tensors["extra.weight"] = torch.zeros(2)

    _rewrite(tree / "memo/memo/reference_net/diffusion_pytorch_model.safetensors", drop_and_add)
    _expect_broken(tree, "reference_net", "1 missing", "1 unexpected keys: extra.weight")


def test_invalid_config_json(tree):
    (tree / "memo/memo/diffusion_net/config.json").write_text("{not json")
    _expect_broken(tree, "diffusion_net", "not valid JSON")


def test_only_pickled_weights_are_refused(tree):
    folder = tree / "memo/memo/image_proj"
    tensors = load_file(str(folder / "diffusion_pytorch_model.safetensors"))
    (folder / "diffusion_pytorch_model.safetensors").unlink()
    torch.save(tensors, folder / "diffusion_pytorch_model.bin")
    _expect_broken(tree, "image_proj", "only pickled weights")


def test_single_file_vae_problems(tree, tmp_path):
    vae = tree / "vae" / mf.VAE_FILE
    data = vae.read_bytes()
    vae.write_bytes(data[:-100])
    _expect_broken(tree, "vae", "truncated download")
    # a safetensors file that is not a VAE (a wav2vec2 in the VAE folder)
    shutil.copy(tree / mf.WAV2VEC_DIR / "model.safetensors", vae)
    _expect_broken(tree, "vae", "not an SD VAE")
    # an LDM VAE with one tensor of the wrong shape
    write_tiny_vae_single_file(vae)
    _rewrite(vae, lambda t: t.__setitem__("decoder.conv_out.bias", torch.zeros(4)))
    _expect_broken(tree, "vae", "decoder.conv_out.bias")


def test_wav2vec2_config_mismatch(tree):
    config_path = tree / mf.WAV2VEC_DIR / "config.json"
    config = json.loads(config_path.read_text())
    config["num_hidden_layers"] = 3
    config_path.write_text(json.dumps(config))
    _expect_broken(tree, "wav2vec2", "does not match Wav2Vec2Model", "missing")


def test_emotion2vec_problems(tree):
    folder = tree / mf.EMOTION2VEC_DIR
    (folder / "config.yaml").rename(folder / "config.yaml.bak")
    _expect_broken(tree, "emotion2vec", "no config.yaml")
    text = (folder / "config.yaml.bak").read_text()
    (folder / "config.yaml").write_text(text.replace("depth: 1\n", "depth: 2\n", 1))
    _expect_broken(tree, "emotion2vec", "does not fit this emotion2vec config")
    (folder / "config.yaml").write_text(text)
    assert status(tree, "emotion2vec").ok
    # a pickle that needs more than tensors is refused by the run-time loader, never unpickled
    torch.save({"blocks.0.weight": torch.zeros(1), "note": Path("x")}, folder / "model.pt")
    _expect_broken(tree, "emotion2vec", "weights_only=True")


def test_onnx_problems(tree, capsys):
    face = tree / "memo/memo/misc/face_analysis/models"
    (face / mf.RECOGNIZER_FILE).write_bytes(b"\x00" * 1000)
    _expect_broken(tree, "face_recognizer", "cannot load ArcFace recognition model")
    # a recogniser where the detector should be: wrong input/output signature
    import numpy as np
    from test_face_models import build_arcface

    build_arcface(face / mf.DETECTOR_FILE, np.zeros((588, 512), np.float32), np.zeros(512, np.float32))
    _expect_broken(tree, "face_detector", "expected 9 outputs")
    from test_audio_separation import identity_model

    identity_model(tree / "memo/memo/misc/vocal_separator" / mf.KIM_VOCAL_FILE, dim_f=100, dim_t=64)
    _expect_broken(tree, "vocal_separator", "unknown MDX-Net model")
    code, out = run_check(capsys, "--models", tree, "--quiet")
    assert code == 1 and "face     BROKEN" in out and "vocals   BROKEN" in out and "core     OK" in out
    assert "core generation can run, but some files are broken" in out


# ------------------------------------------------------------------ ComfyUI loaders name files, folder and command

def test_loaders_say_which_files_where_and_which_command(tmp_path):
    from pack_support import load_pack

    load_pack()  # the pack imported like ComfyUI does (a package named comfyui_memo)
    from comfyui_memo.nodes import host as host_mod
    from comfyui_memo.nodes import loaders
    models = tmp_path / "models"
    roots = {name: [str(models / name)] for name in ("memo", "audio_encoders", "emotion2vec", "insightface",
                                                      "vocal_separator")}
    with host_mod.use_host(host_mod.StandaloneHost(roots)):
        with pytest.raises(ValueError) as err:
            loaders.MemoModelLoader().load("memo/memo")
        text = str(err.value)
        assert "diffusion_net/" in text and str(models / "memo") in text
        assert f"models check --models {models}" in text and f"models fetch --models {models} --only core" in text
        with pytest.raises(ValueError) as err:
            loaders.MemoEmotionModelLoader().load("", "memo/memo")
        assert "emotion2vec_plus_large (config.yaml + model.pt)" in str(err.value)
        assert "--only emotion" in str(err.value) and str(models / "emotion2vec") in str(err.value)
        (models / "insightface/partial").mkdir(parents=True)
        (models / "insightface/partial" / mf.DETECTOR_FILE).write_bytes(b"x")
        with pytest.raises(ValueError) as err:
            loaders.MemoFaceModelLoader().load("insightface/partial")
        assert "lacks glintr100.onnx" in str(err.value) and "--only face" in str(err.value)
        # with nothing installed, ComfyUI rejects a workflow's value before the node runs ("Value not in
        # list") and prints the list: its one entry says what is missing, where, and the command
        for options, feature in ((loaders.checkpoint_options, "core"), (loaders.audio_encoder_options, "core"),
                                 (loaders.emotion2vec_options, "emotion")):
            (entry,) = options()
            assert entry.startswith(loaders.NOT_FOUND) and f"models fetch --models {models} --only {feature}" in entry
            assert str(models) in entry
        (entry,) = loaders.vocal_model_options()
        assert "Kim_Vocal_2.onnx" in entry and "--only vocals" in entry
        with pytest.raises(ValueError, match="no model was found to pick from the list; needs the MEMO release"):
            loaders.MemoModelLoader().load(loaders.checkpoint_options()[0])


def test_nothing_but_the_fetch_command_imports_the_fetcher():
    """No node, no generate path imports model_fetch: the network is only reached on request."""
    root = Path(__file__).resolve().parents[1]
    importing = re.compile(r"^\s*(from\s+\S*model_fetch\s+import|import\s+\S*model_fetch)", re.M)
    users = [p.relative_to(root).as_posix() for p in [*root.glob("memo_pipeline/**/*.py"), *root.glob("nodes/*.py")]
             if importing.search(p.read_text())]
    assert users == ["memo_pipeline/models_cli.py"]
    source = (root / "memo_pipeline/models_cli.py").read_text()
    assert source.count("from .model_fetch import") == 1 and "    from .model_fetch import main_fetch" in source


def test_editor_workflows_carry_the_vae_download_metadata_the_frontend_reads():
    """Frontend 1.35.9 (ComfyUI 0.8.0) collects node.properties.models entries whose `name` is one of
    the node's string widget values, and offers a download only for https://huggingface.co/ URLs of
    .safetensors files into a known model `directory`."""
    root = Path(__file__).resolve().parents[1] / "workflows"
    vae = mf.ITEMS_BY_KEY["vae"]
    (repo_path, local), = vae.files
    editors = sorted(p for p in root.glob("*.json") if not p.name.endswith("_api.json"))
    assert editors
    for path in editors:
        graph = json.loads(path.read_text())
        offered = []
        for node in graph["nodes"]:
            names = {v for v in node["widgets_values"] if isinstance(v, str) and v.strip()}
            offered += [m for m in node["properties"].get("models", []) if m["name"] in names]
        assert offered == [{"name": Path(local).name, "directory": local.split("/")[0],
                            "url": f"https://huggingface.co/{vae.source.repo_id}/resolve/{vae.source.revision}/{repo_path}"}]
        assert offered[0]["url"].startswith("https://huggingface.co/") and offered[0]["name"].endswith(".safetensors")


def test_single_file_vae_loads_offline_and_equals_the_diffusers_folder(tmp_path, monkeypatch):
    """The file `models fetch` installs in models/vae is usable by `generate` without a download:
    built from its own shapes, it decodes exactly like the same weights in a diffusers folder."""
    from memo_pipeline.tiny import write_tiny_vae
    from memo_pipeline.vae import DiffusersVAE

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    single = DiffusersVAE.from_pretrained(write_tiny_vae_single_file(tmp_path / "vae.safetensors", seed=5))
    folder = DiffusersVAE.from_pretrained(write_tiny_vae(tmp_path / "vae", seed=5))
    latents = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    assert torch.equal(single.decode(latents), folder.decode(latents))
    frames = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    assert torch.equal(single.encode(frames), folder.encode(frames))
    plain = tmp_path / "no_groups.safetensors"
    save_file(load_file(str(tmp_path / "vae.safetensors")), str(plain))
    with pytest.raises(ValueError, match="GroupNorm group count"):
        DiffusersVAE.from_pretrained(plain)


# ------------------------------------------------------------------ hostile files and folders: one line each

def test_overlapping_tensors_are_unusable_because_the_reader_refuses_them(tree, capsys):
    from safetensors import SafetensorError
    from model_trees import overlap_two_tensors

    overlap_two_tensors(tree / WEIGHTS)
    with pytest.raises(SafetensorError):  # what generate would meet
        load_file(str(tree / WEIGHTS))
    _expect_broken(tree, "diffusion_net", "overlaps the tensor before it", "cannot be read")
    code, out = run_check(capsys, "--models", tree, "--quiet")
    assert code == 1 and "core     BROKEN" in out


def test_deeply_nested_header_is_one_reason_not_a_recursion_error(tree, capsys):
    from model_trees import nested_header

    nested_header(tree / "vae" / mf.VAE_FILE)
    _expect_broken(tree, "vae", "nested too deeply")
    code, out = run_check(capsys, "--models", tree, "--quiet")
    assert code == 1 and "Traceback" not in out


def test_a_config_asking_for_2000_layers_is_refused_in_well_under_a_few_seconds(tree, capsys):
    path = tree / "memo/memo/diffusion_net/config.json"
    config = json.loads(path.read_text())
    config["layers_per_block"] = 2000
    path.write_text(json.dumps(config))
    import time

    started = time.monotonic()
    code, out = run_check(capsys, "--models", tree)
    assert time.monotonic() - started < 20  # the whole check of every feature; 70 s for this one config before
    assert code == 1 and "'layers_per_block' asks for 2000 layers; at most 48" in out


def test_a_vae_file_with_diffusers_names_is_found_with_comfyui_folder(tree, tmp_path, capsys):
    """The file ComfyUI's Load VAE loads (diffusers key names) is accepted, and loads like the folder."""
    from model_trees import vae_file_with_diffusers_names
    from memo_pipeline.tiny import write_tiny_vae
    from memo_pipeline.vae import DiffusersVAE

    vae_file_with_diffusers_names(tree)
    comfy = tmp_path / "ComfyUI"
    comfy.mkdir()
    os.symlink(tree, comfy / "models")
    code, out = run_check(capsys, "--comfyui", comfy)
    assert code == 0, out
    assert "[found   ] core    SD VAE (sd-vae-ft-mse)" in out and "single-file SD VAE" in out
    single = DiffusersVAE.from_pretrained(tree / "vae" / mf.VAE_FILE)
    folder = DiffusersVAE.from_pretrained(write_tiny_vae(tmp_path / "folder", seed=7))
    latents = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    assert torch.equal(single.decode(latents), folder.decode(latents))


def test_a_broken_diffusers_named_vae_gets_a_reason_in_words(tree):
    from model_trees import vae_file_with_diffusers_names

    vae_file_with_diffusers_names(tree)
    _rewrite(tree / "vae" / mf.VAE_FILE, lambda t: [t.pop(k) for k in list(t) if k.startswith("encoder.down_blocks.1.")])
    found = _expect_broken(tree, "vae", "encoder levels are not numbered")
    assert "index out of range" not in found.detail


def test_models_pointing_at_a_file_is_one_line(tmp_path, capsys):
    target = tmp_path / "models.txt"
    target.write_text("not a folder")
    for command in ("check", "fetch"):
        code = main(["models", command, "--models", str(target)])
        out = capsys.readouterr().out.strip().splitlines()
        assert code == 2 and len(out) == 1 and "is a file, not a models folder" in out[0], (command, out)


def test_an_unreadable_subfolder_is_one_line(tree, capsys, monkeypatch):
    """Tests run as root, whom chmod does not stop: the listing of one folder is made to fail as it
    would for another user."""
    private = tree / "memo/private"
    private.mkdir()
    real_iterdir = Path.iterdir

    def iterdir(self):
        if self == private:
            raise PermissionError(13, "Permission denied", str(self))
        return real_iterdir(self)

    monkeypatch.setattr(Path, "iterdir", iterdir)
    code, out = run_check(capsys, "--models", tree)
    assert code == 1
    assert f"cannot look for it: {private}: cannot be accessed (permission denied)" in out
    assert "Traceback" not in out


def test_a_folder_where_a_file_should_be_is_one_reason(tree):
    path = tree / "memo/memo/image_proj/config.json"
    path.unlink()
    path.mkdir()
    _expect_broken(tree, "image_proj", "is a folder where a JSON file should be")


def test_an_invalid_hf_endpoint_does_not_stop_commands_that_need_no_network(release, tmp_path):
    """huggingface_hub parses HF_ENDPOINT when it is imported; `models check` never uses it."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    for value in ("http://127.0.0.1:99999", "http://[::1"):
        env = {**os.environ, "HF_ENDPOINT": value}
        check = subprocess.run([sys.executable, "-m", "memo_pipeline", "models", "check", "--models", str(release),
                                "--quiet"], cwd=root, env=env, capture_output=True, text=True, timeout=300)
        assert check.returncode == 0, check.stderr
        assert "Traceback" not in check.stderr and f"ignoring HF_ENDPOINT={value!r}" in check.stderr
    (tmp_path / "empty").mkdir()
    fetch = subprocess.run([sys.executable, "-m", "memo_pipeline", "models", "fetch", "--models", str(tmp_path / "empty"),
                            "--only", "vocals", "--yes"], cwd=root, env={**os.environ, "HF_ENDPOINT": "http://[::1"},
                           capture_output=True, text=True, timeout=300)
    lines = (fetch.stdout + fetch.stderr).strip().splitlines()
    assert fetch.returncode == 1 and len(lines) == 1, lines
    assert lines[0].startswith("error: HF_ENDPOINT='http://[::1' is not a usable address (Invalid IPv6 URL)")
