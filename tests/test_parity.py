"""The parity command against the official implementation's golden fixtures."""

from __future__ import annotations

import json
import shutil

import pytest

from support import GOLDEN, golden_case
from memo_pipeline import parity
from memo_pipeline.models import spatial_attention
from memo_pipeline.models.motion_memory import MotionMemory


def test_all_golden_cases_pass_with_the_cpu_tuning_off_and_on(capsys):
    assert parity.main([str(GOLDEN)]) == 0  # default: --cpu-tuning both
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1] == "26 passed, 0 failed"
    assert all(" PASS" in line for line in lines[:-1]), lines
    cases = [line.split()[0] for line in lines[:-1]]
    assert all(cases.count(case) == 2 for case in cases)
    assert sum(" tuning on " in line for line in lines) == sum(" tuning off " in line for line in lines) == 13


@pytest.mark.parametrize("mode", ["on", "off"])
def test_one_tuning_state(mode, capsys):
    assert parity.main([str(GOLDEN), "--cpu-tuning", mode, "--json", "--case", "reference_net", "--case", "full_pipeline"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [(c["case"], c["cpu_tuning"]) for c in report["cases"]] == [("full_pipeline", mode), ("reference_net", mode)]


def test_json_output_lists_every_case(capsys):
    assert parity.main([str(GOLDEN), "--json", "--case", "image_proj", "--case", "audio_proj"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert {(c["case"], c["cpu_tuning"]) for c in report["cases"]} == {
        (case, mode) for case in ("image_proj", "audio_proj") for mode in ("on", "off")}
    assert report["passed"] == 4 and report["failed"] == 0


def test_changed_decay_fails(monkeypatch, capsys):
    monkeypatch.setattr(parity.modules, "MotionMemory", lambda: MotionMemory(decay=0.8))
    assert parity.main([str(GOLDEN), "--case", "memory_linear_attention", "--case", "memory_attention"]) == 1
    out = capsys.readouterr().out
    assert out.count("FAIL") == 4 and out.strip().endswith("0 passed, 4 failed")


def test_aligned_instead_of_tiled_reference_fails(monkeypatch, capsys):
    monkeypatch.setattr(spatial_attention, "tile_reference", lambda ref, frames: ref.repeat_interleave(frames, dim=0))
    assert parity.main([str(GOLDEN), "--case", "spatial_ref_block", "--case", "diffusion_net"]) == 1
    assert capsys.readouterr().out.strip().endswith("0 passed, 4 failed")


def test_wrong_softmax_axis_fails(monkeypatch):
    import torch

    from memo_pipeline.models import motion_module

    real_softmax = torch.softmax

    def keys_over_features(x, dim):  # keys softmaxed over the head dim instead of over frames (axis 1)
        return real_softmax(x, dim=-1 if dim == 1 else dim)

    monkeypatch.setattr(motion_module.torch, "softmax", keys_over_features)
    meta, tensors = golden_case("memory_linear_attention")
    assert not parity.run_case(meta, tensors).passed
    assert not parity.run_case(meta, tensors, cpu_tuning=True).passed


def test_missing_output_and_empty_directory(tmp_path, capsys):
    meta, _ = golden_case("image_proj")
    (tmp_path / "image_proj.json").write_text(json.dumps(meta))
    shutil.copy(GOLDEN / "image_proj.safetensors", tmp_path / "image_proj.safetensors")
    assert parity.main([str(tmp_path)]) == 0
    empty = tmp_path / "empty"
    empty.mkdir()
    assert parity.main([str(empty)]) == 1  # nothing ran: not a pass
    assert capsys.readouterr().out.strip().endswith("0 passed, 0 failed")


def test_unknown_case_is_reported_as_failure(tmp_path, capsys):
    meta, _ = golden_case("image_proj")
    meta.update(case="mystery", official_class="memo.models.something.Else")
    (tmp_path / "mystery.json").write_text(json.dumps(meta))
    shutil.copy(GOLDEN / "image_proj.safetensors", tmp_path / "mystery.safetensors")
    assert parity.main([str(tmp_path)]) == 1
    assert "could not run" in capsys.readouterr().out


@pytest.mark.slow  # two threads on a shared CI machine: up to a minute
@pytest.mark.parametrize("name", ["reference_net", "diffusion_net"])
@pytest.mark.parametrize("tuned", [False, True])
def test_unet_cases_also_hold_with_two_threads(name, tuned):
    import torch

    torch.set_num_threads(2)
    meta, tensors = golden_case(name)
    assert parity.run_case(meta, tensors, cpu_tuning=tuned).passed


def _copy_case(name, folder, manifest=True):
    shutil.copy(GOLDEN / f"{name}.json", folder / f"{name}.json")
    shutil.copy(GOLDEN / f"{name}.safetensors", folder / f"{name}.safetensors")
    if manifest:
        entries = json.loads((GOLDEN / "manifest.json").read_text())["files"]
        (folder / "manifest.json").write_text(json.dumps({"files": {name: entries[name]}}))


def test_golden_files_match_their_manifest():
    from memo_pipeline.parity.fixtures import checksum_problem, find_cases, read_manifest

    manifest = read_manifest(GOLDEN)
    cases = [p.stem for p in find_cases(GOLDEN)]
    assert sorted(manifest) == sorted(cases) and len(cases) == 13
    assert all(checksum_problem(GOLDEN / f"{c}.safetensors", manifest[c]) is None for c in cases)


def test_changed_fixture_file_is_not_run(tmp_path, capsys):
    _copy_case("image_proj", tmp_path)
    assert parity.main([str(tmp_path)]) == 0
    weights = tmp_path / "image_proj.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01  # same size, one bit of one stored number flipped
    weights.write_bytes(bytes(data))
    capsys.readouterr()
    assert parity.main([str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "fixture not run" in out and "sha256" in out and out.strip().endswith("0 passed, 1 failed")  # not run at all


def test_fixture_missing_from_or_listed_in_manifest_fails(tmp_path, capsys):
    _copy_case("image_proj", tmp_path)
    _copy_case("audio_proj", tmp_path, manifest=False)  # present, but the manifest does not list it
    entries = json.loads((tmp_path / "manifest.json").read_text())
    entries["files"]["gone"] = {"bytes": 1, "sha256": "0" * 64}  # listed, but the files are absent
    (tmp_path / "manifest.json").write_text(json.dumps(entries))
    assert parity.main([str(tmp_path)]) == 1
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1] == "2 passed, 2 failed"  # image_proj with the tuning off and on
    assert any(line.startswith("audio_proj") and "not listed in manifest.json" in line for line in lines)
    assert any(line.startswith("gone") and "missing" in line for line in lines)


def test_rounding_noise_from_tolerances_is_reported(capsys):
    assert parity.main([str(GOLDEN), "--json", "--case", "diffusion_net", "--cpu-tuning", "off"]) == 0
    (case,) = json.loads(capsys.readouterr().out)["cases"]
    recorded = json.loads((GOLDEN / "tolerances.json").read_text())["diffusion_net"]["fp64_vs_fp32"]["max_abs"]
    assert case["official_fp64_vs_fp32"] == recorded
