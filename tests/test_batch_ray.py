"""The batch on a real local Ray cluster (two CPUs, shared by every test here): outputs equal the
in-process run's, a worker killed with SIGKILL mid-row loses nothing, and workers check their models."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

import support
from batch_support import assert_same_video, by_line, make_inputs, run_batch, write_csv

LENGTHS = {"a": 0.3, "b": 0.2, "c": 0.4, "d": 0.5}  # 9, 6, 12 and 15 frames: 3, 2, 3 and 4 clips of 4


@pytest.fixture(scope="module")
def ray_cluster():
    ray = support.need("ray")
    from memo_pipeline.batch.cluster import connect

    if ray.is_initialized():
        ray.shutdown()
    package_root = str(Path(__file__).resolve().parents[1])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": package_root}})
    assert connect(None) is ray  # the batch joins the running cluster instead of starting another
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def sequential(tiny_bundle, tmp_path_factory):
    """The manifest of four rows and its outputs from the in-process (sequential) batch."""
    import torch

    root = tmp_path_factory.mktemp("batch_ray")
    inputs = make_inputs(root / "in", LENGTHS)
    manifest = write_csv(root / "jobs.csv", [{"image": inputs["portrait"], "audio": inputs[name], "seed": i}
                                             for i, name in enumerate(LENGTHS)])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as every Ray worker of one thread runs
    try:
        code, report = run_batch(tiny_bundle, manifest, root / "sequential")
    finally:
        torch.set_num_threads(threads)
    assert code == 0 and all(row["status"] == "done" for row in report["rows"])
    return root, manifest, root / "sequential"


def test_four_rows_on_two_workers_equal_the_sequential_run(ray_cluster, tiny_bundle, sequential):
    root, manifest, expected = sequential
    out_dir = root / "ray"
    code, report = run_batch(tiny_bundle, manifest, out_dir, "--ray", "--workers", "2")
    assert code == 0 and report["mode"] == "ray" and report["workers"] == 2
    assert [row["status"] for row in report["rows"]] == ["done"] * 4
    assert len({row["worker"] for row in report["rows"]}) == 2  # both workers took rows from the queue
    startup = report["startup"]  # the workers' start (process, imports, models check, load), in no row's seconds
    assert 0 < startup["model_load_seconds"] < startup["seconds"] < report["seconds"]
    for name in LENGTHS:
        assert_same_video(out_dir / f"portrait-{name}.mp4", expected / f"portrait-{name}.mp4")

    code, report = run_batch(tiny_bundle, manifest, out_dir, "--ray", "--workers", "2")
    assert code == 0 and [row["status"] for row in report["rows"]] == ["skipped"] * 4


def test_a_worker_killed_during_the_second_clip_loses_nothing(ray_cluster, tiny_bundle, sequential):
    root, _, expected = sequential
    manifest = write_csv(root / "long.csv", [{"image": root / "in" / "portrait.png", "audio": root / "in" / "d.wav",
                                              "seed": 3}])
    out_dir = root / "killed"
    work = out_dir / ".portrait-d.mp4.memo-batch"
    killed = {}

    def kill_during_second_clip():
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline:
            if (work / "state.safetensors").is_file():  # clip 1 is saved: clip 2 is being made
                pid = int(__import__("json").loads((work / "row.json").read_text())["pid"])
                killed["niceness"] = os.getpriority(os.PRIO_PROCESS, pid)
                os.kill(pid, signal.SIGKILL)
                killed["pid"] = pid
                return
            time.sleep(0.01)

    killer = threading.Thread(target=kill_during_second_clip, daemon=True)
    killer.start()
    code, report = run_batch(tiny_bundle, manifest, out_dir, "--ray", "--workers", "2")
    killer.join()
    row = by_line(report)[2]
    assert "pid" in killed and code == 0 and row["status"] == "done"
    assert killed["niceness"] == os.getpriority(os.PRIO_PROCESS, 0)  # not lowered to Ray's nice 15 (slower rows)
    assert row["attempts"] == 2 and 1 <= row["resumed_from"] < 4  # continued from its last finished clip
    assert row["worker"] != "" and not row["worker"].endswith(f":{killed['pid']}")  # on a restarted worker
    assert_same_video(out_dir / "portrait-d.mp4", expected / "portrait-d.mp4")


def test_a_worker_without_models_fails_with_what_models_check_says(ray_cluster, tiny_bundle, sequential, tmp_path,
                                                                    capsys):
    root, manifest, _ = sequential
    from memo_pipeline.cli import main

    empty = tmp_path / "no_memo"
    empty.mkdir()
    code = main(["batch", str(manifest), "--out-dir", str(tmp_path / "out"), "--checkpoint", str(empty),
                 "--vae", str(tiny_bundle["vae"]), "--wav2vec", str(tiny_bundle["wav2vec2"]), "--allow-no-face",
                 "--resolution", "64", "--steps", "1", "--no-progress", "--ray", "--workers", "1"])
    err = capsys.readouterr().err
    assert code == 2 and "no worker could start" in err and str(empty / "reference_net") in err
    assert "does not exist" in err and "Traceback" not in err


def test_ctrl_c_on_ray_stops_after_the_current_clip_and_the_rerun_finishes(ray_cluster, tiny_bundle, tmp_path):
    """Ctrl-C in the driver: the busy worker ends its row after the clip it is making, the finished
    clips and the state stay, the exit code says so, and the same command finishes the row with the
    frames of an undisturbed run (a 2 s row of 15 clips at 6 steps, so the stop lands mid-row)."""
    import torch

    inputs = make_inputs(tmp_path / "in", {"long": 2.0})
    manifest = write_csv(tmp_path / "jobs.csv", [{"image": inputs["portrait"], "audio": inputs["long"], "seed": 3}])
    slower = ("--steps", "6")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the Ray worker of one thread runs
    try:
        code, _ = run_batch(tiny_bundle, manifest, tmp_path / "undisturbed", *slower)
    finally:
        torch.set_num_threads(threads)
    assert code == 0
    out_dir = tmp_path / "ctrl_c"
    work = out_dir / ".portrait-long.mp4.memo-batch"
    sent = threading.Event()

    def ctrl_c_after_the_first_clip():
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline:
            if (work / "state.safetensors").is_file():
                os.kill(os.getpid(), signal.SIGINT)  # the driver's own handler: stop after the current clips
                sent.set()
                return
            time.sleep(0.01)

    sender = threading.Thread(target=ctrl_c_after_the_first_clip, daemon=True)
    sender.start()
    code, report = run_batch(tiny_bundle, manifest, out_dir, *slower, "--ray", "--workers", "1",
                             "--threads-per-worker", "1")
    sender.join()
    row = by_line(report)[2]
    assert sent.is_set() and code == 130 and row["status"] == "interrupted", report
    assert 1 <= row["clips_generated"] < 15
    assert (work / "clip-00000.mkv").is_file() and (work / "state.safetensors").is_file()
    assert not (out_dir / "portrait-long.mp4").exists()

    code, report = run_batch(tiny_bundle, manifest, out_dir, *slower, "--ray", "--workers", "1",
                             "--threads-per-worker", "1")
    row = by_line(report)[2]
    assert code == 0 and row["status"] == "done" and row["resumed_from"] >= 1
    assert_same_video(out_dir / "portrait-long.mp4", tmp_path / "undisturbed" / "portrait-long.mp4")
