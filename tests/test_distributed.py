"""Data parallel on CPU: 2 processes (gloo) with the same global batch as 1 process follow the
same loss curve."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from gentune.runs import read_log

from .conftest import _data

pytestmark = pytest.mark.slow  # subprocesses / a browser

ROOT = Path(__file__).resolve().parent.parent


def _train(launcher, model, data, out, *extra):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    args = [
        "-m",
        "gentune",
        "train",
        "--task",
        "summarization",
        "--method",
        "lora",
        "--data",
        str(data),
        "--model",
        model,
        "--out",
        str(out),
        "--batch-size",
        "8",
        "--micro-batch-size",
        "4",
        "--lr",
        "5e-3",
        "--max-steps",
        "8",
        "--lora-dropout",
        "0",
        "--eval-every",
        "4",
        "--eval-generate",
        "0",
        "--save-every",
        "4",
        "--no-progress",
        "--no-tensorboard",
        # the equality of 2 processes and 1 is a property of the arithmetic in fp32; bf16
        # autocast rounds differently for micro-batches of other shapes
        "--precision",
        "fp32",
        *extra,
    ]
    proc = subprocess.run(
        [sys.executable, *launcher, *args], env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def test_two_processes_follow_the_one_process_loss_curve(tiny_llama, tmp_path):
    data = _data(tmp_path, n=48)
    _train([], tiny_llama, data, tmp_path / "one")
    out = _train(
        ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"],
        tiny_llama,
        data,
        tmp_path / "two",
    )
    one, two = read_log(tmp_path / "one"), read_log(tmp_path / "two")
    assert len(one) == len(two) == 8
    for a, b in zip(one, two):
        assert a["target_tokens"] == b["target_tokens"]
        assert float(a["loss"]) == pytest.approx(float(b["loss"]), rel=1e-4)
        assert float(a["grad_norm"]) == pytest.approx(float(b["grad_norm"]), rel=1e-3)
    wa = load_file(tmp_path / "one" / "model" / "adapter_model.safetensors")
    wb = load_file(tmp_path / "two" / "model" / "adapter_model.safetensors")
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-3, atol=1e-5)
    manifest = json.loads((tmp_path / "two" / "manifest.json").read_text())
    assert manifest["stats"]["processes"] == 2
    # logs and checkpoints came from one process only
    assert out.count("saved run to") == 1
    assert sorted(p.name for p in (tmp_path / "two" / "checkpoints").iterdir()) == [
        "step-00000004",
        "step-00000008",
    ]
