"""bench/device_check.sh --tiny: the GPU check runs unchanged on the CPU with tiny configs."""

import importlib.util
import json
import math
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_device_check_tiny_runs_and_reports_everything(tmp_path):
    out = tmp_path / "device_check.json"
    done = subprocess.run(["bash", str(ROOT / "bench" / "device_check.sh"), "--tiny", "--out", str(out)],
                          capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    runs = report["runs"]
    assert [(r["dtype"], r["clips"], r["clip_constants"]) for r in runs] == [
        ("bfloat16", 2, True), ("float32", 2, True), ("float16", 2, True), ("bfloat16", 1, False)]
    assert all(r["finite"] and r["s_per_frame"] > 0 and r["frames"] == 16 * r["clips"] for r in runs)
    assert "skipped" not in report and report["budget_s"] is None  # --tiny runs every part
    # every video compared with fp32 comes from the same 2-clip case (weights and inputs), all of it
    deviation = report["deviation_from_fp32"]
    assert set(deviation) == {"bfloat16", "float16"} and all(d["max_abs"] > 0 for d in deviation.values())
    assert deviation["bfloat16"]["psnr_db"] > 35  # bench/precision.py --case tiny measures ~44 dB; 18 dB meant unlike inputs
    assert set(report["vae"]) == {"decode_16_per_call_s", "decode_1_per_call_s"}
    memory = report["memory"]
    assert [(r["weight_dtype"], r["offload"]) for r in memory] == [
        ("bf16", "model"), ("bf16", "none"), ("fp8_e4m3fn", "model"), ("fp8_e4m3fn", "none")]
    assert all(r["finite"] and r["equal_to_no_offload"] and r["clips"] == 2 for r in memory)
    assert memory[2]["stored_weights_mib"] < memory[0]["stored_weights_mib"]  # fp8 layers really stored smaller
    assert all(r["peak_gpu_mib"] is None and "no GPU" in r["peak_note"] for r in memory)  # CI has no GPU
    assert "s/frame" in done.stdout and "peak memory, bf16 compute, fp8_e4m3fn weights" in done.stdout


def _device_check_module():
    spec = importlib.util.spec_from_file_location("device_check", ROOT / "bench" / "device_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_budget_skips_a_part_that_would_end_past_it_and_says_why():
    import torch

    budget = _device_check_module().Budget(100.0)
    budget.per_frame_step, budget.build_s = 0.05, 10.0
    assert budget.estimate(32, 20, torch.bfloat16) == pytest.approx(0.05 * 32 * 20 + 10)
    assert budget.estimate(32, 20, torch.float32) == pytest.approx(0.05 * 4 * 32 * 20 + 10)
    report = {}
    assert budget.allows("bf16", report, budget.estimate(32, 20, torch.bfloat16)) and "skipped" not in report
    assert not budget.allows("fp32", report, budget.estimate(32, 20, torch.float32))
    assert report["skipped"]["fp32"].startswith("skipped: needs ~138 s") and "100 s budget" in report["skipped"]["fp32"]
    assert _device_check_module().Budget(math.inf).allows("anything", report, 1e9)
