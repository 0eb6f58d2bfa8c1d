"""`python -m memo_pipeline batch` in this process: manifest checks, equality with `generate`,
reruns that skip finished rows, and Ctrl-C that keeps every finished clip."""

from __future__ import annotations

import os
import signal

import pytest

import numpy as np

from batch_support import (SETTINGS, assert_same_video, by_line, decode, exact_frames, make_inputs, model_args,
                           run_batch, write_csv)
from memo_pipeline.cli import main
from memo_pipeline.video_io import read_video_info


def _no_loading(monkeypatch):
    from memo_pipeline import loading

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(loading.MemoModels, "load", refuse)


def test_a_manifest_with_bad_rows_is_refused_before_any_model_loads_naming_every_one(tiny_bundle, tmp_path,
                                                                                    monkeypatch, capsys):
    _no_loading(monkeypatch)
    inputs = make_inputs(tmp_path / "in", {"a": 0.3})
    broken = tmp_path / "in" / "broken.wav"
    broken.write_bytes(b"RIFF....WAVEfmt not really audio")
    image, audio = inputs["portrait"], inputs["a"]
    lines = [
        {"image": str(image), "audio": str(audio), "out": "good.mp4"},               # line 1: fine
        {"image": str(tmp_path / "missing.png"), "audio": str(audio)},                # 2: missing file
        {"image": str(image), "audio": str(broken), "out": "b.mp4"},                  # 3: unreadable audio
        {"image": str(image), "audio": str(audio), "out": "c.mp4", "colour": "red"},  # 4: unknown setting
        {"image": str(image), "audio": str(audio), "out": "good.mp4", "seed": 3},     # 5: duplicate output
        {"image": str(image), "audio": str(audio), "out": str(audio)},                # 6: would overwrite an input
        {"image": str(image), "audio": str(audio), "out": "d.mp4", "steps": "many"},  # 7: bad value
    ]
    import json

    manifest = tmp_path / "jobs.jsonl"
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
    audio_bytes = audio.read_bytes()
    code, _ = run_batch(tiny_bundle, manifest, tmp_path / "out")
    err = capsys.readouterr().err
    assert code == 2 and "7 problem(s)" in err and "Traceback" not in err
    for line, words in ((2, "does not exist"), (3, "unreadable audio"), (4, "unknown setting(s) colour"),
                        (5, "also the output of line 1"), (6, "overwrite the input audio"), (7, "steps 'many'")):
        assert f"line {line}: " in err and words in err, (line, err)
    assert "line 1:" not in err
    assert audio.read_bytes() == audio_bytes and not list((tmp_path / "out").glob("*.mp4"))

    csv_manifest = write_csv(tmp_path / "jobs.csv", [{"image": image, "audio": audio, "colour": "red"}])
    code, _ = run_batch(tiny_bundle, csv_manifest, tmp_path / "out")
    assert code == 2 and "line 1: unknown column(s) colour" in capsys.readouterr().err


def test_batch_equals_generate_and_a_rerun_redoes_only_a_truncated_output(tiny_bundle, tmp_path, monkeypatch, capsys):
    inputs = make_inputs(tmp_path / "in", {"a": 0.3, "b": 0.2})
    manifest = write_csv(tmp_path / "jobs.csv", [
        {"image": inputs["portrait"], "audio": inputs["a"], "seed": 5, "emotion": "happy"},
        {"image": inputs["portrait"], "audio": inputs["b"], "out": "sub/b.mp4", "steps": 2},
    ])
    out_dir = tmp_path / "out"
    code, report = run_batch(tiny_bundle, manifest, out_dir)
    assert code == 0 and [r["status"] for r in report["rows"]] == ["done", "done"]
    startup = report["startup"]  # the model load, once, and in no row's seconds
    assert 0 < startup["model_load_seconds"] == startup["seconds"]
    assert startup["seconds"] + sum(r["seconds"] for r in report["rows"]) <= report["seconds"]
    first, second = out_dir / "portrait-a.mp4", out_dir / "sub" / "b.mp4"
    assert read_video_info(first)["frames"] == 9 and read_video_info(second)["frames"] == 6
    table = capsys.readouterr().out
    assert "row" in table and "worker" in table and str(second) in table

    # the same row through `generate`: the very same frames go to the encoder, the same soundtrack comes out
    from memo_pipeline.video_io import VideoWriter, frame_to_uint8

    given = []
    original_write = VideoWriter.write

    def recording_write(self, frames):
        given.extend(frame_to_uint8(frame) for frame in frames)
        return original_write(self, frames)

    monkeypatch.setattr(VideoWriter, "write", recording_write)
    single = tmp_path / "single.mp4"
    assert main(["generate", *model_args(tiny_bundle), *SETTINGS, "--image", str(inputs["portrait"]),
                 "--audio", str(inputs["a"]), "--seed", "5", "--emotion", "happy", "--out", str(single)]) == 0
    monkeypatch.undo()
    assert np.array_equal(np.stack(given), exact_frames(first)[:9])
    assert np.array_equal(decode(single)[1], decode(first)[1])

    _no_loading(monkeypatch)  # a finished batch does no generation: not even a model load
    code, report = run_batch(tiny_bundle, manifest, out_dir)
    assert code == 0 and [r["status"] for r in report["rows"]] == ["skipped", "skipped"]
    assert report["startup"] == {"seconds": 0.0, "model_load_seconds": 0.0}
    monkeypatch.undo()

    kept, kept_frames = second.read_bytes(), exact_frames(second)
    second.write_bytes(kept[: len(kept) // 2])  # checked, not assumed from the file's presence
    first_mtime = first.stat().st_mtime_ns
    code, report = run_batch(tiny_bundle, manifest, out_dir)
    rows = by_line(report)
    assert code == 0 and rows[2]["status"] == "skipped" and rows[3]["status"] == "done"
    assert rows[3]["clips_generated"] == 2 and first.stat().st_mtime_ns == first_mtime
    assert np.array_equal(exact_frames(second), kept_frames) and read_video_info(second)["frames"] == 6

    changed = write_csv(tmp_path / "changed.csv", [{"image": inputs["portrait"], "audio": inputs["a"], "seed": 6}])
    code, _ = run_batch(tiny_bundle, changed, out_dir)  # another seed must not take the old file for its own
    assert code == 2 and "--overwrite" in capsys.readouterr().err


def test_ctrl_c_keeps_finished_clips_and_the_rerun_generates_only_the_missing_ones(tiny_bundle, tmp_path, monkeypatch):
    from memo_pipeline.batch import rowfolder

    inputs = make_inputs(tmp_path / "in", {"long": 0.5, "short": 0.2})
    manifest = write_csv(tmp_path / "jobs.csv", [{"image": inputs["portrait"], "audio": inputs["long"]},
                                                 {"image": inputs["portrait"], "audio": inputs["short"]}])
    reference_dir = tmp_path / "reference"
    code, _ = run_batch(tiny_bundle, manifest, reference_dir)
    assert code == 0

    original = rowfolder.RowFolder.save_state
    saved = []

    def save_then_ctrl_c(self, state):
        original(self, state)
        saved.append(state.next_clip)
        if len(saved) == 1:
            os.kill(os.getpid(), signal.SIGINT)  # the real handler: stop after this clip

    monkeypatch.setattr(rowfolder.RowFolder, "save_state", save_then_ctrl_c)
    out_dir = tmp_path / "out"
    code, report = run_batch(tiny_bundle, manifest, out_dir)
    rows = by_line(report)
    assert code == 130 and rows[2]["status"] == "interrupted" and rows[3]["status"] == "not started"
    work = out_dir / ".portrait-long.mp4.memo-batch"
    assert (work / "clip-00000.mkv").is_file() and (work / "state.safetensors").is_file()
    assert not (out_dir / "portrait-long.mp4").exists()
    monkeypatch.undo()

    code, report = run_batch(tiny_bundle, manifest, out_dir)
    rows = by_line(report)
    assert code == 0 and rows[2]["resumed_from"] == 1 and rows[2]["clips_generated"] == 3
    for name in ("portrait-long.mp4", "portrait-short.mp4"):
        assert_same_video(out_dir / name, reference_dir / name)
    assert sorted(p.name for p in work.iterdir()) == ["clip-00000.mkv", "clip-00001.mkv", "clip-00002.mkv",
                                                      "clip-00003.mkv", "row.json"]  # the state is gone


def test_a_row_failing_for_its_own_reason_is_reported_and_the_rest_continue(tiny_bundle, tmp_path, monkeypatch):
    inputs = make_inputs(tmp_path / "in", {"a": 0.2, "b": 0.2})
    manifest = write_csv(tmp_path / "jobs.csv", [{"image": inputs["portrait"], "audio": inputs["a"]},
                                                 {"image": inputs["portrait"], "audio": inputs["b"]}])
    from memo_pipeline import cli

    real = cli.prepare_job

    def fail_for_a(job, *args, **kwargs):
        if job.audio.name == "a.wav":
            raise ValueError("audio a.wav: a problem of this row only")
        return real(job, *args, **kwargs)

    monkeypatch.setattr(cli, "prepare_job", fail_for_a)
    code, report = run_batch(tiny_bundle, manifest, tmp_path / "out")
    rows = by_line(report)
    assert code == 1 and rows[2]["status"] == "failed" and "problem of this row only" in rows[2]["error"]
    assert rows[3]["status"] == "done" and read_video_info(tmp_path / "out" / "portrait-b.mp4")["frames"] == 6


def test_ray_options_need_ray_and_say_how_to_install_it(tiny_bundle, tmp_path, monkeypatch, capsys):
    import builtins

    real_import = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray" or name.startswith("ray."):
            raise ImportError("No module named 'ray'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    inputs = make_inputs(tmp_path / "in", {"a": 0.2})
    manifest = write_csv(tmp_path / "jobs.csv", [{"image": inputs["portrait"], "audio": inputs["a"]}])
    code, _ = run_batch(tiny_bundle, manifest, tmp_path / "out", "--ray")
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "pip install 'comfyui-memo[cluster]'" in err
    code, _ = run_batch(tiny_bundle, manifest, tmp_path / "out", "--workers", "2")
    assert code == 2 and "need --ray" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["0", "-1"])
def test_worker_counts_must_be_positive(tiny_bundle, tmp_path, capsys, value):
    manifest = write_csv(tmp_path / "jobs.csv", [{"image": "x.png", "audio": "x.wav"}])
    code, _ = run_batch(tiny_bundle, manifest, tmp_path / "out", "--ray", "--workers", value)
    assert code == 2 and ">= 1" in capsys.readouterr().err
