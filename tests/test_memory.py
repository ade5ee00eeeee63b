"""Measured memory: peak resets, the layout probe, and --memory-budget in training."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from gentune.errors import TrainingError
from gentune.training import memory
from tests.conftest import PAIRS, write_jsonl


def test_peak_resets_so_a_later_peak_is_measured_alone():
    if torch.cuda.is_available():  # the peak read is the GPU's
        block = torch.ones(100 * 2**20, device="cuda")  # 400 MiB
    else:
        block = bytearray(400 * 2**20)  # touched: 400 MiB resident
        block[::4096] = b"x" * len(block[::4096])
    high = memory.peak_memory_mb()
    del block
    memory._release_freed()
    assert memory.reset_peak_memory()
    assert memory.peak_memory_mb() < high - 300


def test_candidate_layouts_go_from_fastest_to_leanest():
    layouts = memory.candidate_layouts(2048, checkpointing=False, longest=300)
    assert [(x.micro_batch_tokens, x.gradient_checkpointing) for x in layouts] == [
        (2048, False),
        (2048, True),
        (1024, True),
        (512, True),
        (300, True),  # one row of the longest example: the least there is
    ]


def test_split_by_tokens_bounds_every_piece_and_keeps_every_row():
    lengths = {0: 1000, 1: 420, 2: 400, 3: 390, 4: 100, 5: 90, 6: 80, 7: 20}
    pieces = memory.split_by_tokens([3, 0, 5, 1, 7, 2, 4, 6], lengths.get, 1200)
    assert pieces == [[0], [1, 2], [3, 4, 5], [6, 7]]
    assert sorted(i for p in pieces for i in p) == list(range(8))
    assert all(len(p) * max(lengths[i] for i in p) <= 1200 for p in pieces)
    assert memory.split_by_tokens([1, 2], lengths.get, None) == [[1, 2]]
    # data-parallel: pieces are whole multiples of the processes, each process within the cap
    assert memory.split_by_tokens([4, 5, 6, 7], lengths.get, 200, world=2) == [[4, 5, 6, 7]]


def test_fit_layout_takes_the_first_that_fits_and_names_all_when_none_does():
    layouts = memory.candidate_layouts(2048, False, 300)
    peaks = {(2048, False): 900, (2048, True): 700, (1024, True): 450, (512, True): 300}
    peaks[(300, True)] = 250

    def measure(x):
        return peaks[(x.micro_batch_tokens, x.gradient_checkpointing)]

    logged = []
    got = memory.fit_layout(measure, layouts, budget_mb=500, extra_mb=40, log=logged.append)
    assert (got.micro_batch_tokens, got.gradient_checkpointing) == (1024, True)
    assert len(logged) == 3  # 940, 740, 490: stops at the first that fits
    with pytest.raises(TrainingError, match=r"no layout fits .*<= 300 tokens.*290 MiB"):
        memory.fit_layout(measure, layouts, budget_mb=200, extra_mb=40, log=lambda *_: None)


def _wide_llama():
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=256,
        hidden_size=256,
        intermediate_size=1024,
        num_hidden_layers=6,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=1024,
    )
    return AutoModelForCausalLM.from_config(config)


def test_checkpointing_measurably_lowers_the_probed_peak_and_leaves_no_trace():
    model = _wide_llama()
    model.train()
    ids = torch.randint(0, 256, (8, 768))
    labels = ids.clone()
    labels[:, :700] = -100
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    torch.manual_seed(5)
    rng = torch.get_rng_state()
    plain = memory.measure_step(model, batch, nullcontext)
    memory.set_checkpointing(model, True)
    lean = memory.measure_step(model, batch, nullcontext)
    assert plain - lean > 200, (plain, lean)  # six layers of 8 x 768 activations, not kept
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(torch.get_rng_state(), rng)


def _budget_cfg(model, tmp_path, rows, budget: float, **kw):
    """A tiny run's settings with --memory-budget `budget` GiB."""
    from gentune.config import TrainConfig

    return TrainConfig(
        task="summarization",
        data=str(write_jsonl(tmp_path / "d.jsonl", rows)),
        out=str(tmp_path / "run"),
        model=model,
        progress=False,
        tensorboard=False,
        eval_generate=0,
        memory_budget=budget,
        **kw,
    )


CPU = memory.CPU_MICRO_BATCH_TOKENS  # the probe's start on a CPU


def test_training_with_a_budget_records_the_layout_and_resumes_with_it(tiny_llama, tmp_path):
    import json

    from gentune.checkpoint import latest
    from gentune.training.train import train

    # 64 GiB: far above a tiny model, the configured layout fits
    cfg = _budget_cfg(tiny_llama, tmp_path, PAIRS * 2, 64.0, max_steps=2, batch_size=4)
    lines: list[str] = []
    train(cfg, log=lines.append)
    assert any(f"memory probe: micro-batches of <= {CPU} tokens:" in x for x in lines)
    assert any(f"{CPU} tokens (the fastest that fits --memory-budget 64 GiB)" in x for x in lines)
    ckpt = latest(tmp_path / "run")
    state = json.loads((ckpt / "state.json").read_text())
    assert state["layout"] == {"micro_batch_tokens": CPU, "gradient_checkpointing": False}
    lines.clear()
    train(replace(cfg, max_steps=3, resume="latest"), log=lines.append)
    assert not any("memory probe" in x for x in lines)  # the run's layout, not a new probe
    assert any("(the run's layout)" in x for x in lines)


def test_a_budget_nothing_fits_stops_with_the_measurements(tiny_llama, tmp_path):
    from gentune.training.train import train

    # 0.01 GiB = 10 MiB: less than the interpreter itself
    cfg = _budget_cfg(tiny_llama, tmp_path, PAIRS, 0.01, max_steps=1, batch_size=2)
    with pytest.raises(TrainingError, match=r"--memory-budget 0.0: no layout fits.*checkpointing"):
        train(cfg, log=lambda *_: None)


@pytest.mark.parametrize("budget", [64.0, 0.01])
def test_plan_shows_the_probe_and_the_layout_for_a_budget(tiny_llama, tmp_path, budget):
    from gentune.training.plan import plan

    text = plan(_budget_cfg(tiny_llama, tmp_path, PAIRS, budget, batch_size=4), measure=False)
    assert f"memory probe: micro-batches of <= {CPU} tokens:" in text
    if budget > 1:
        assert (
            f"layout: micro-batches of <= {CPU} tokens (the fastest that fits --memory-budget 64 GiB)"
            in text
        )
    else:
        assert "layout: --memory-budget 0.0: no layout fits" in text


def _probe(code: str, mode: str, *, unset: str) -> str:
    """The last line a probe script prints, run in a fresh process as `mode` ("torch": plain,
    "gentune": with gentune's bound) without the user's setting `unset`."""
    env = {k: v for k, v in os.environ.items() if k != unset}
    out = subprocess.run(
        [sys.executable, "-c", code, mode], env=env, capture_output=True, text=True, check=True
    )
    return out.stdout.strip().splitlines()[-1]


_SHAPES_PROBE = """
import re, sys, torch
if sys.argv[1] == "gentune":
    from gentune.training.memory import bound_kernel_cache
    bound_kernel_cache()
def rss():
    return int(re.search(r"VmRSS:\\s+(\\d+)", open("/proc/self/status").read()).group(1)) / 1024
lin = torch.nn.Linear(576, 1536)
with torch.autocast("cpu", dtype=torch.bfloat16):
    lin(torch.randn(8, 576)).sum().backward()
start = rss()
for rows in range(300, 700, 2):  # a micro-batch of new length each time, as in training
    with torch.autocast("cpu", dtype=torch.bfloat16):
        lin(torch.randn(rows, 576, requires_grad=True)).sum().backward()
print(rss() - start)
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmRSS")
def test_the_kernel_cache_is_bounded_so_new_shapes_do_not_grow_memory():
    """oneDNN keeps a primitive per shape (1024 by default): 200 bf16 matmul shapes grow the
    process by hundreds of MiB; with gentune's bound it grows far less. (Training's memory grew
    with its steps this way: bench/results/memory.md.)"""

    def growth(mode: str) -> float:
        return float(_probe(_SHAPES_PROBE, mode, unset="ONEDNN_PRIMITIVE_CACHE_CAPACITY"))

    unbounded, bounded = growth("torch"), growth("gentune")
    assert bounded < unbounded - 150, (unbounded, bounded)


def test_every_command_bounds_the_kernel_cache_and_a_users_setting_wins(monkeypatch):
    from gentune.cli import main

    monkeypatch.delenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", raising=False)
    assert main(["train", "--help"]) == 0
    assert os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == str(memory.ONEDNN_PRIMITIVE_CACHE)
    monkeypatch.setenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "512")
    memory.bound_kernel_cache()
    assert os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == "512"


_HEAP_PROBE = """
import ctypes, ctypes.util, sys, torch
if sys.argv[1] == "gentune":
    from gentune.training.memory import bound_heap
    assert bound_heap()
libc = ctypes.CDLL(ctypes.util.find_library("c"))
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]
libc.mallinfo2.restype = Info
first = torch.empty(3 << 20, dtype=torch.uint8)
del first  # glibc's dynamic threshold now rises to 3 MiB
before = libc.mallinfo2().hblkhd
second = torch.empty(3 << 20, dtype=torch.uint8)  # a later activation of the same size
print(libc.mallinfo2().hblkhd - before)
"""


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or "glibc" not in " ".join(platform.libc_ver()),
    reason="glibc's mallopt",
)
def test_large_tensors_keep_their_own_mappings_so_freed_activations_go_back():
    """Without the bound glibc serves a 3 MiB tensor freed once from its heap after that (kept
    by the process when freed, fragmented); with it every block above 2 MiB is a mapping of its
    own, given back when freed (bench/results/memory.md: -127 to -177 MiB at the peak)."""

    def mapped(mode: str) -> int:
        return int(_probe(_HEAP_PROBE, mode, unset="MALLOC_MMAP_THRESHOLD_"))

    assert mapped("torch") == 0
    assert mapped("gentune") >= 3 << 20


def test_a_users_heap_setting_wins(monkeypatch):
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", str(1 << 20))
    assert not memory.bound_heap()
