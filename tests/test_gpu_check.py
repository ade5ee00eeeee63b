"""bench/gpu_check.py runs (on this machine's CPU, with its small settings) and prints its
tables, so that it cannot rot before a GPU machine runs it in full."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # subprocesses, the embedded model

ROOT = Path(__file__).resolve().parent.parent


def test_gpu_check_prints_training_mfu_loss_curves_and_generation():
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--small"],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    out = proc.stdout
    for side in ("full fp32", "full bf16", "lora fp32", "lora bf16"):
        row = re.search(rf"^\| {side} \| ([\d.]+) \| (\d+) \| ([\d.]+) % \|", out, re.M)
        assert row, out
        assert float(row[2]) > 0 and 0 < float(row[3]) < 100
    curve = re.findall(r"^\| (\d) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \|$", out, re.M)
    assert [c[0] for c in curve] == ["1", "2"]
    # bf16 autocast follows the fp32 curve (the same first step, to rounding)
    assert float(curve[0][1]) == pytest.approx(float(curve[0][2]), rel=0.02)
    assert "(attention: sdpa)" in out
    for side in ("generate fp32", "generate bf16"):
        row = re.search(rf"^\| {side} \| ([\d.]+) \| ([\d.]+) \|", out, re.M)
        assert row and float(row[2]) > 0, out
