"""The command line: the demo (the README's main job) and `generate` on tiny checkpoints."""

from __future__ import annotations

import math

import pytest

from memo_pipeline.cli import main, make_test_portrait, make_test_tone
from memo_pipeline.video_io import read_video_info


def test_demo_writes_a_talking_video(tmp_path, capsys):
    out = tmp_path / "demo.mp4"
    assert main(["demo", "--out", str(out), "--seconds", "1.2", "--steps", "1", "--no-progress"]) == 0
    info = read_video_info(out)
    assert info["frames"] == math.ceil(1.2 * 30)
    assert (info["width"], info["height"]) == (64, 64)
    assert float(info["fps"]) == 30
    assert info["audio_duration"] == pytest.approx(1.2, abs=0.05)
    assert "wrote" in capsys.readouterr().out


def _generate(tiny_bundle, tmp_path, *extra):
    image = make_test_portrait(tmp_path / "portrait.png", 128)
    audio = make_test_tone(tmp_path / "tone.wav", 0.3)
    out = tmp_path / "out.mp4"
    args = ["generate", "--checkpoint", str(tiny_bundle["memo"]), "--vae", str(tiny_bundle["vae"]),
            "--wav2vec", str(tiny_bundle["wav2vec2"]), "--image", str(image), "--audio", str(audio), "--out", str(out),
            "--steps", "1", "--no-progress", *extra]
    return main(args), out


def test_generate_short_audio_at_25_fps(tiny_bundle, tmp_path):
    code, out = _generate(tiny_bundle, tmp_path, "--fps", "25", "--resolution", "96", "--allow-no-face",
                          "--emotion", "happy", "--vae-batch", "1")
    assert code == 0
    info = read_video_info(out)
    assert info["frames"] == math.ceil(0.3 * 25) and (info["width"], info["height"]) == (96, 96)
    assert float(info["fps"]) == 25 and info["audio_duration"] == pytest.approx(0.3, abs=0.05)


def test_generate_rejects_bad_resolution_and_missing_face_models(tiny_bundle, tmp_path, capsys):
    code, out = _generate(tiny_bundle, tmp_path, "--resolution", "100", "--allow-no-face")
    assert code == 2 and "multiple of 8" in capsys.readouterr().err and not out.exists()
    with pytest.raises(SystemExit, match="no face models"):
        _generate(tiny_bundle, tmp_path)
    code, _ = _generate(tiny_bundle, tmp_path, "--allow-no-face", "--emotion", "ecstatic")
    assert code == 2 and "ecstatic" in capsys.readouterr().err


def test_outputs_never_replace_an_input_or_an_existing_file(tiny_bundle, tmp_path, capsys):
    image = make_test_portrait(tmp_path / "portrait.png", 128)
    audio = make_test_tone(tmp_path / "tone.wav", 0.3)
    audio_bytes, image_bytes = audio.read_bytes(), image.read_bytes()
    base = ["generate", "--checkpoint", str(tiny_bundle["memo"]), "--vae", str(tiny_bundle["vae"]),
            "--wav2vec", str(tiny_bundle["wav2vec2"]), "--image", str(image), "--audio", str(audio),
            "--steps", "1", "--no-progress", "--allow-no-face", "--resolution", "64"]
    for extra in (["--out", str(audio)], ["--out", str(tmp_path / "x.mp4"), "--save-state", str(image)],
                  ["--out", str(tmp_path / "." / "tone.wav"), "--overwrite"]):
        assert main(base + extra) == 2
        assert "input" in capsys.readouterr().err
    assert audio.read_bytes() == audio_bytes and image.read_bytes() == image_bytes
    existing = tmp_path / "old.mp4"
    existing.write_bytes(b"keep me")
    assert main(base + ["--out", str(existing)]) == 2
    assert "--overwrite" in capsys.readouterr().err and existing.read_bytes() == b"keep me"
    assert main(base + ["--out", str(existing), "--overwrite"]) == 0
    assert read_video_info(existing)["frames"] == 9
