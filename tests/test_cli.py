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


def _base(tiny_bundle, tmp_path, seconds=0.3):
    image = tmp_path / "portrait.png"
    audio = tmp_path / "tone.wav"
    if not image.exists():
        make_test_portrait(image, 128)
        make_test_tone(audio, seconds)
    return ["generate", "--checkpoint", str(tiny_bundle["memo"]), "--vae", str(tiny_bundle["vae"]),
            "--wav2vec", str(tiny_bundle["wav2vec2"]), "--image", str(image), "--audio", str(audio),
            "--steps", "1", "--no-progress", "--allow-no-face", "--resolution", "64"]


def test_settings_files_and_outputs_are_checked_before_any_model_loads(tiny_bundle, tmp_path, capsys, monkeypatch):
    from memo_pipeline import cli

    def no_loading(*args, **kwargs):
        raise AssertionError("a model was loaded before the inputs were checked")

    monkeypatch.setattr(cli.MemoModels, "load", no_loading)
    base = _base(tiny_bundle, tmp_path)
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    cases = [
        (["--out", str(tmp_path / "o.mp4"), "--emotion", ""], "--emotion is empty"),
        (["--out", str(tmp_path / "o.mp4"), "--emotion", "0:happy, 1:ecstatic"], "ecstatic"),
        (["--out", str(tmp_path / "o.mp4"), "--steps", "0"], "steps must be >= 1"),
        (["--out", str(tmp_path / "o.mp4"), "--seed", "-3"], "seed must be"),
        (["--out", str(tmp_path / "o.mp4"), "--resolution", "0"], "positive multiple of 8"),
        (["--out", str(tmp_path / "o.mp4"), "--vae", str(tmp_path / "missing_vae")], "--vae"),
        (["--out", str(tmp_path / "o.mkv")], ".mp4 extension"),
        (["--out", str(tmp_path)], "is a folder"),
        (["--out", str(blocker / "o.mp4")], "is a file, not a folder"),
        (["--out", str(tmp_path / "o.mp4"), "--save-state", str(tmp_path / "nowhere" / "s.safetensors")], "does not exist"),
        (["--out", str(tmp_path / "o.mp4"), "--resume", str(tmp_path / "missing.safetensors")], "--resume"),
    ]
    import os

    if os.geteuid() != 0:  # root writes anywhere
        cases.append((["--out", str(locked / "o.mp4")], "cannot write into"))
    for extra, message in cases:
        assert main(base + extra) == 2, extra
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, (extra, err)
    locked.chmod(0o700)


def test_truncated_audio_warns_with_both_durations(tmp_path, caplog):
    from memo_pipeline.audio.io import load_audio

    full = make_test_tone(tmp_path / "full.wav", 1.0)
    data = full.read_bytes()
    cut = tmp_path / "cut.wav"
    cut.write_bytes(data[: len(data) // 2])
    with caplog.at_level("WARNING", logger="memo_pipeline"):
        clip = load_audio(cut)
    assert "truncated" in caplog.text and "1.00 s" in caplog.text and f"{clip.duration_s:.2f} s" in caplog.text


def test_ctrl_c_keeps_the_finished_clips_and_resume_finishes_the_video(tiny_bundle, tmp_path, monkeypatch):
    import torch

    from memo_pipeline.state import GenerationState
    from memo_pipeline.video_io import VideoWriter

    original_write = VideoWriter.write
    written = {}
    interrupt_at = {"clip": None}

    def recording_write(self, frames):
        clips = written.setdefault(self.path, [])
        if interrupt_at["clip"] == len(clips):
            raise KeyboardInterrupt
        clips.append(frames.clone())
        return original_write(self, frames)

    monkeypatch.setattr(VideoWriter, "write", recording_write)
    base = _base(tiny_bundle, tmp_path, seconds=1.0) + ["--frames-per-clip", "8", "--past-frames", "8"]
    full, part, rest = tmp_path / "full.mp4", tmp_path / "part.mp4", tmp_path / "rest.mp4"
    assert main(base + ["--out", str(full)]) == 0

    interrupt_at["clip"] = 2  # Ctrl-C while the third clip is being written
    assert main(base + ["--out", str(part)]) == 130
    state_path = tmp_path / "part.state.safetensors"
    assert read_video_info(part)["frames"] == 16 and GenerationState.load(state_path).next_clip == 2

    interrupt_at["clip"] = None
    assert main(base + ["--resume", str(state_path), "--out", str(rest)]) == 0
    info = read_video_info(rest)
    assert info["frames"] == 14 and info["audio_duration"] == pytest.approx(14 / 30, abs=0.03)
    joined = torch.cat(written[str(part)] + written[str(rest)])
    assert torch.equal(joined, torch.cat(written[str(full)]))  # the very frames of the uninterrupted run


def test_malicious_yaml_and_pickle_are_one_line_errors(tiny_bundle, tmp_path, capsys):
    import pickle

    base = _base(tiny_bundle, tmp_path) + ["--out", str(tmp_path / "o.mp4")]
    yaml_dir = tmp_path / "e2v_yaml"
    yaml_dir.mkdir()
    torch_file = yaml_dir / "model.pt"
    import torch

    torch.save({"w": torch.zeros(1)}, torch_file)
    (yaml_dir / "config.yaml").write_text("model_conf: !!python/object/apply:os.system ['echo pwned']\n")
    pickle_dir = tmp_path / "e2v_pickle"
    pickle_dir.mkdir()

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    (pickle_dir / "model.pt").write_bytes(pickle.dumps(Evil()))
    for folder, word in ((yaml_dir / "model.pt", "not a plain YAML"), (pickle_dir / "model.pt", "refused")):
        assert main(base + ["--emotion2vec", str(folder)]) == 2
        captured = capsys.readouterr()
        assert word in captured.err and captured.err.count("\n") == 1 and "Traceback" not in captured.err
        assert "pwned" not in captured.out


def test_vocal_separation_is_on_by_default_in_the_official_order(tiny_bundle, tmp_path, monkeypatch, caplog):
    import numpy as np

    from memo_pipeline.audio import separation
    from memo_pipeline.audio.io import resample

    seen = []

    class RecordingSeparator:  # the separator itself is tested in test_audio_separation.py
        def __init__(self, path, *args, **kwargs):
            assert str(path).endswith("misc/vocal_separator/Kim_Vocal_2.onnx")

        def separate(self, waveform, sample_rate, output_sample_rate=None, **kwargs):
            seen.append((waveform.shape, sample_rate))
            return np.stack([resample(channel, sample_rate, output_sample_rate) for channel in waveform])

    monkeypatch.setattr(separation, "MDXVocalSeparator", RecordingSeparator)
    checkpoint = tmp_path / "memo"
    checkpoint.mkdir()
    for child in tiny_bundle["memo"].iterdir():
        (checkpoint / child.name).symlink_to(child)
    base = _base(tiny_bundle, tmp_path)
    base[base.index("--checkpoint") + 1] = str(checkpoint)
    assert main(base + ["--out", str(tmp_path / "plain.mp4")]) == 0 and seen == []  # no Kim_Vocal_2: no separation
    (checkpoint / "misc").unlink() if (checkpoint / "misc").is_symlink() else None
    (checkpoint / "misc" / "vocal_separator").mkdir(parents=True)
    (checkpoint / "misc" / "vocal_separator" / "Kim_Vocal_2.onnx").write_bytes(b"stand-in")
    if (tiny_bundle["memo"] / "misc" / "audio_emotion_classifier").is_dir():
        (checkpoint / "misc" / "audio_emotion_classifier").symlink_to(tiny_bundle["memo"] / "misc" / "audio_emotion_classifier")
    with caplog.at_level("INFO", logger="memo_pipeline"):
        assert main(base + ["--out", str(tmp_path / "official.mp4")]) == 0
    assert seen == [((1, 4800), 16000)] and "official order" in caplog.text  # the 16 kHz 16-bit track
    tone44 = make_test_tone(tmp_path / "tone44.wav", 0.3, sample_rate=44100)
    base[base.index("--audio") + 1] = str(tone44)
    assert main(base + ["--out", str(tmp_path / "official44.mp4")]) == 0
    assert seen[-1] == ((1, 4800), 16000)  # official: the 16 kHz track, whatever the file's rate
    assert main(base + ["--out", str(tmp_path / "full.mp4"), "--vocal-separation", "full-band"]) == 0
    assert seen[-1] == ((1, 13230), 44100)  # full band: the file at its own rate
    seen.clear()
    assert main(base + ["--out", str(tmp_path / "off.mp4"), "--no-vocal-separation"]) == 0 and seen == []


def _interrupted_run(tiny_bundle, tmp_path, monkeypatch, base, out, at_clip=2):
    """`generate` stopped by Ctrl-C while clip `at_clip + 1` is being written (in-process)."""
    from memo_pipeline.video_io import VideoWriter

    original_write = VideoWriter.write
    clips = {"n": 0}

    def write(self, frames):
        if clips["n"] == at_clip:
            raise KeyboardInterrupt
        clips["n"] += 1
        return original_write(self, frames)

    with monkeypatch.context() as patch:
        patch.setattr(VideoWriter, "write", write)
        assert main(base + ["--out", str(out)]) == 130


def test_resume_refuses_to_write_over_the_part_its_state_came_from(tiny_bundle, tmp_path, monkeypatch, capsys):
    base = _base(tiny_bundle, tmp_path, seconds=1.0) + ["--frames-per-clip", "8", "--past-frames", "8"]
    part = tmp_path / "part1.mp4"
    _interrupted_run(tiny_bundle, tmp_path, monkeypatch, base, part)
    state = tmp_path / "part1.state.safetensors"
    kept = part.read_bytes()
    capsys.readouterr()
    for extra in ([], ["--overwrite"], ["--overwrite", "--save-state", str(tmp_path / "s2.safetensors")]):
        assert main(base + ["--resume", str(state), "--out", str(tmp_path / "." / "part1.mp4"), *extra]) == 2
        err = capsys.readouterr().err
        assert "is the video the state" in err and "part1_rest.mp4" in err and err.count("\n") == 1, err
    assert part.read_bytes() == kept


def test_resume_refuses_a_state_made_at_another_fps(tiny_bundle, tmp_path, monkeypatch, capsys):
    base = _base(tiny_bundle, tmp_path, seconds=1.0) + ["--frames-per-clip", "8", "--past-frames", "8"]
    _interrupted_run(tiny_bundle, tmp_path, monkeypatch, base + ["--fps", "30"], tmp_path / "part.mp4")
    capsys.readouterr()
    rest = tmp_path / "rest.mp4"
    assert main(base + ["--fps", "25", "--resume", str(tmp_path / "part.state.safetensors"), "--out", str(rest)]) == 2
    err = capsys.readouterr().err
    assert "fps 30.0, this run asks for 25" in err and err.count("\n") == 1 and not rest.exists()


def test_a_full_disk_while_saving_the_state_says_what_was_kept(tiny_bundle, tmp_path, monkeypatch, capsys, caplog):
    import errno

    from memo_pipeline import state as state_module

    base = _base(tiny_bundle, tmp_path, seconds=1.0) + ["--frames-per-clip", "8", "--past-frames", "8"]
    out, saved = tmp_path / "o.mp4", tmp_path / "s.safetensors"
    real_save = state_module.save_file
    calls = {"n": 0}

    def fills_up(tensors, filename, metadata=None):
        calls["n"] += 1
        if calls["n"] == 1:  # the state after clip 1 fits, then the disk is full
            return real_save(tensors, filename, metadata=metadata)
        with open(filename, "wb") as f:
            f.write(b"\0" * 64)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(state_module, "save_file", fills_up)
    with caplog.at_level("WARNING", logger="memo_pipeline"):
        assert main(base + ["--out", str(out), "--save-state", str(saved)]) == 2
    err = capsys.readouterr().err
    assert err == f"error: {saved}: No space left on device\n"
    assert read_video_info(out)["frames"] == 16  # both finished clips are kept, playable
    assert state_module.GenerationState.load(saved).next_clip == 1  # the older state is intact
    assert "the state could NOT be saved" in caplog.text and "still holds the state after clip 1" in caplog.text
    assert "16 frames (2 clip(s)) are in" in caplog.text
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_a_really_full_disk_while_saving_the_state_is_one_line_and_keeps_the_video(tiny_bundle, tmp_path):
    """The state folder is a tmpfs with room for one state file (in a private mount namespace):
    the second save fails with the system's ENOSPC, which safetensors reports in its own words."""
    import os
    import shlex
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    from memo_pipeline.state import GenerationState

    if shutil.which("unshare") is None or subprocess.run(
            ["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs in a private namespace here (unshare -rm)")
    base = _base(tiny_bundle, tmp_path, seconds=1.0) + ["--frames-per-clip", "8", "--past-frames", "8"]
    probe = tmp_path / "probe.safetensors"
    assert main(base + ["--out", str(tmp_path / "probe.mp4"), "--save-state", str(probe)]) == 0
    room_kb = probe.stat().st_size * 3 // 2 // 1024  # one state file fits, a second one beside it does not
    small = tmp_path / "small"
    small.mkdir()
    out = tmp_path / "o.mp4"
    command = shlex.join([sys.executable, "-m", "memo_pipeline", *base, "--out", str(out), "--save-state",
                          str(small / "s.safetensors")])
    folder, kept = shlex.quote(str(small)), shlex.quote(str(tmp_path / "kept.safetensors"))
    script = (f"mount -t tmpfs -o size={room_kb}k tmpfs {folder} && {{ {command}; code=$?; "
              f"cp {folder}/s.safetensors {kept}; exit $code; }}")
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(["unshare", "-rm", "sh", "-c", script], cwd=root, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"})
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines()[-1] == f"error: {small / 's.safetensors'}: No space left on device"
    assert "Traceback" not in done.stderr and "could NOT be saved" in done.stderr
    assert read_video_info(out)["frames"] == 16  # both finished clips, playable
    assert GenerationState.load(tmp_path / "kept.safetensors").next_clip == 1  # the older state, whole
