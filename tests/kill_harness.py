"""Kills anywhere: SIGKILL each writing command at random moments, many times, and check after
each kill that nothing half-written is taken as complete and that the rerun (`--resume` for an
interrupted run) ends with the outputs of an uninterrupted run.

Commands (tiny models): the data cache build and training (one process; each kill gets a fresh
cache directory, so early kills land in the cache build), training with two processes, the
distillation's labelling, export, and evaluate writing predictions. The slow test
`tests/test_kills.py` runs a modest count; by hand:

    .venv/bin/python -m tests.kill_harness --kills 10      # per command; prints the figures
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Command:
    """One writing command: how to run it, what its outputs are, how a rerun continues."""

    name: str
    args: Callable[[Path], list[str]]  # argv after `python -m`, for an output directory
    outputs: Callable[[Path], dict]  # the outputs to compare, from a finished output dir
    check: Callable[[Path], str | None]  # after a kill: what is wrong (None: nothing)
    # extra argv for the rerun (None: the run was complete when killed, no rerun)
    resume: Callable[[Path], list[str] | None] = lambda out: []
    env: dict = field(default_factory=dict)


@dataclass
class Tally:
    kills: int = 0
    finished_first: int = 0  # the command ended before the kill landed
    corrupt: list[str] = field(default_factory=list)
    differ: list[str] = field(default_factory=list)


def _run(argv: list[str], env: dict, kill_after: float | None) -> tuple[int, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), **env}
    proc = subprocess.Popen(
        [sys.executable, "-m", *argv], env=env, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    if kill_after is not None:
        try:
            out, _ = proc.communicate(timeout=kill_after)
            return proc.returncode, out
        except subprocess.TimeoutExpired:
            _kill_tree(proc.pid)  # the command and every process it started (as a node dies)
            out, _ = proc.communicate(timeout=60)
            return -signal.SIGKILL, out
    out, _ = proc.communicate(timeout=900)
    return proc.returncode, out


def _kill_tree(pid: int) -> None:
    """SIGKILL a process and all its descendants (torchrun's workers lead sessions of their
    own: a process-group kill would miss them), children first found, all killed at once."""
    import psutil

    try:
        parent = psutil.Process(pid)
        tree = [parent, *parent.children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for p in tree:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    psutil.wait_procs(tree, timeout=30)


def exercise(cmd: Command, kills: int, work: Path, seed: int = 0, log=print) -> Tally:
    """An uninterrupted reference run, then `kills` runs killed at a random moment of the
    reference's duration, each checked and then rerun to the end and compared."""
    rng = random.Random(seed)
    tally = Tally()
    ref = work / f"{cmd.name}-ref"
    env = {**cmd.env, "GENTUNE_HOME": str(work / f"{cmd.name}-home-ref")}
    started = time.time()
    code, out = _run(cmd.args(ref), env, None)
    if code != 0:
        raise RuntimeError(f"{cmd.name}: the reference run failed:\n{out[-3000:]}")
    duration = time.time() - started
    expected = cmd.outputs(ref)
    for k in range(kills):
        out_dir = work / f"{cmd.name}-{k}"
        env = {**cmd.env, "GENTUNE_HOME": str(work / f"{cmd.name}-home-{k}")}
        code, _ = _run(cmd.args(out_dir), env, rng.uniform(0.5, duration))
        if code != -signal.SIGKILL:
            tally.finished_first += 1
        else:
            tally.kills += 1
            problem = cmd.check(out_dir)
            if problem:
                tally.corrupt.append(f"{cmd.name} kill {k}: {problem}")
        extra = cmd.resume(out_dir)
        code, out = (0, "") if extra is None else _run(cmd.args(out_dir) + extra, env, None)
        if code != 0:
            tally.differ.append(f"{cmd.name} kill {k}: the rerun failed: {out[-2000:]}")
        elif cmd.outputs(out_dir) != expected:
            tally.differ.append(f"{cmd.name} kill {k}: the outputs differ from the reference")
        log(f"{cmd.name}: kill {k + 1}/{kills} ({'killed' if code else 'done'})")
    return tally


# --- the commands -----------------------------------------------------------------------


def _tensors(path: Path) -> dict:
    from safetensors.torch import load_file

    return {
        f"{f.relative_to(path)}:{k}": v.tolist()
        for f in sorted(path.rglob("*.safetensors"))
        for k, v in load_file(f).items()
    }


def _curve(run: Path) -> list:
    from gentune.rundir import read_log

    return [{k: r.get(k) for k in ("step", "loss", "lr", "val_loss")} for r in read_log(run)]


def _run_check(out: Path) -> str | None:
    from gentune import checkpoint
    from gentune.rundir import run_state

    state = run_state(out)
    if state == "complete" and not (out / "model").is_dir():
        return "a manifest without a model"
    for ck in checkpoint.complete(out) if out.is_dir() else []:
        if not (ck / "state.json").exists():
            return f"{ck.name} taken as complete without its state"
    return None


def _train(model: str, data: Path, procs: int = 1) -> Command:
    base = ["train", "--task", "summarization", "--model", model, "--data", str(data),
            "--method", "full", "--max-steps", "12", "--save-every", "3", "--batch-size", "4",
            "--lr", "5e-3", "--eval-generate", "0", "--no-progress", "--no-tensorboard"]  # fmt: skip
    launch = (
        ["torch.distributed.run", "--standalone", "--nproc_per_node", str(procs), "-m", "gentune"]
        if procs > 1
        else ["gentune"]
    )
    return Command(
        name="train" if procs == 1 else f"train-{procs}proc",
        args=lambda out: [*launch, *base, "--out", str(out)],
        outputs=lambda out: {"weights": _tensors(out / "model"), "curve": _curve(out)},
        check=_run_check,
        resume=lambda out: {"interrupted": ["--resume"], "complete": None}.get(_state(out), []),
        env={"OMP_NUM_THREADS": "1"},
    )


def _state(out: Path) -> str | None:
    from gentune.rundir import run_state

    return run_state(out)


def _lines_check(name: str, rows: int) -> Callable[[Path], str | None]:
    def check(out: Path) -> str | None:
        path = out / name
        if not path.exists():
            return None
        lines = path.read_text().splitlines()
        try:
            [json.loads(x) for x in lines]
        except ValueError:
            return f"{name} holds a half-written line"
        return None if len(lines) == rows else f"{name} has {len(lines)} of {rows} rows"

    return check


def _evaluate(run: str, data: Path, rows: int) -> Command:
    def outputs(out: Path) -> dict:
        metrics = json.loads((out / "metrics.json").read_text())
        metrics["meta"].pop("seconds")
        return {"predictions": (out / "predictions.jsonl").read_text(), "metrics": metrics}

    return Command(
        name="evaluate",
        args=lambda out: [
            "gentune",
            "evaluate",
            run,
            "--data",
            str(data),
            "--out",
            str(out),
            "--no-progress",
        ],  # fmt: skip
        outputs=outputs,
        check=_lines_check("predictions.jsonl", rows),
    )


def _export(run: str) -> Command:
    def check(out: Path) -> str | None:
        if out.exists() and not (out / "gentune_export.json").exists():
            return "an export directory without its marker file"
        return None

    def outputs(out: Path) -> dict:
        files = sorted(p.name for p in out.iterdir())
        return {"files": files, "weights": _tensors(out)}

    return Command(
        name="export",
        args=lambda out: ["gentune", "export", run, "--out", str(out)],
        outputs=outputs,
        check=check,
    )


def _distill(run: str, inputs: Path, rows: int) -> Command:
    def outputs(out: Path) -> dict:
        labels = [json.loads(x) for x in (out / "labels.jsonl").read_text().splitlines()]
        return {"labels": sorted((x["input"], x.get("output")) for x in labels)}

    def check(out: Path) -> str | None:
        path = out / "labels.jsonl"
        if not path.exists():
            return None
        lines = path.read_text().splitlines()
        for x in lines[:-1]:  # the last line may be cut: the cache drops it (tested there)
            try:
                json.loads(x)
            except ValueError:
                return "a cut line before the last in labels.jsonl"
        return None

    return Command(
        name="distill-labels",
        args=lambda out: [
            "gentune",
            "distill",
            "--task",
            "summarization",
            "--teacher",
            run,
            "--inputs",
            str(inputs),
            "--out",
            str(out),
            "--label-only",
            "--max-new-tokens",
            "16",
            "--no-progress",
        ],  # fmt: skip
        outputs=outputs,
        check=check,
    )


def commands(tiny: str, trained_run: str, work: Path, which: set[str] | None = None):
    """The commands under test, on a tiny model and a run trained on it."""
    sys.path.insert(0, str(ROOT))
    from tests.conftest import PAIRS, write_jsonl

    data = write_jsonl(work / "data.jsonl", PAIRS * 4)
    held = write_jsonl(work / "held.jsonl", PAIRS)
    inputs = write_jsonl(work / "inputs.jsonl", [{"input": r["input"]} for r in PAIRS])
    all_ = [
        _train(tiny, data),
        _train(tiny, data, procs=2),
        _distill(trained_run, inputs, len(PAIRS)),
        _export(trained_run),
        _evaluate(trained_run, held, len(PAIRS)),
    ]
    return [c for c in all_ if which is None or c.name in which]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kills", type=int, default=10, help="kills per command")
    p.add_argument("--only", help="comma list of command names")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    sys.path.insert(0, str(ROOT))
    from gentune.training.train import train
    from tests.conftest import PAIRS, build_tiny, tiny_cfg, write_jsonl

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        tiny = str(build_tiny(work / "tiny", "llama"))
        data = write_jsonl(work / "trained.jsonl", PAIRS * 4)
        cfg = tiny_cfg(tiny, data, work / "trained", method="full", max_steps=150, lr=5e-3,
                       batch_size=4, eval_generate=0)  # fmt: skip
        run = str(train(cfg, log=lambda *_: None))
        which = set(a.only.split(",")) if a.only else None
        total = Tally()
        for cmd in commands(tiny, run, work, which):
            t = exercise(cmd, a.kills, work, seed=a.seed, log=lambda x: print(x, flush=True))
            total.kills += t.kills
            total.finished_first += t.finished_first
            total.corrupt += t.corrupt
            total.differ += t.differ
        n = len(commands(tiny, run, work, which))
        print(f"{total.kills} kills over {n} commands ({total.finished_first} ended before "
              f"their kill), {len(total.corrupt)} corrupt, {len(total.differ)} reruns that "
              "differ from the uninterrupted run")  # fmt: skip
        for line in total.corrupt + total.differ:
            print("  " + line[:500])


if __name__ == "__main__":
    main()
