"""bench/device_check.sh --tiny: the GPU check runs unchanged on the CPU with tiny configs."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_device_check_tiny_runs_and_reports_everything(tmp_path):
    out = tmp_path / "device_check.json"
    done = subprocess.run(["bash", str(ROOT / "bench" / "device_check.sh"), "--tiny", "--out", str(out)],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    runs = report["runs"]
    assert [(r["dtype"], r["clips"], r["clip_constants"]) for r in runs] == [
        ("bfloat16", 2, True), ("bfloat16", 1, False), ("float16", 1, True), ("float32", 1, True)]
    assert all(r["finite"] and r["s_per_frame"] > 0 and r["frames"] == 16 * r["clips"] for r in runs)
    deviation = report["deviation_from_fp32_first_clip"]
    assert set(deviation) == {"bfloat16", "float16"} and all(d["max_abs"] > 0 for d in deviation.values())
    assert set(report["vae"]) == {"decode_16_per_call_s", "decode_1_per_call_s"}
    assert "s/frame" in done.stdout and sys.executable  # the summary lines are printed
