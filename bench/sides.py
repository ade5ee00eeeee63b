"""Running a bench's sides each in its own process (so that peak memory is its own): the worker
prints its result as one `RESULT {json}` line, the parent collects them."""

from __future__ import annotations

import json
import resource
import subprocess
import sys


def report(result: dict) -> None:
    """In a worker: add the process's peak RSS and print the result line."""
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(result))


def run_sides(script: str, sides: dict[str, list[str]], args: list[str]) -> dict[str, dict]:
    """{side: result} of `python SCRIPT EXTRA... ARGS...` for each side's extra arguments, one
    after another; a side that fails ends the bench with its output."""
    results = {}
    for side, extra in sides.items():
        print(f"running {side} ...", file=sys.stderr, flush=True)
        proc = subprocess.run(
            [sys.executable, script, *extra, *args], capture_output=True, text=True
        )
        lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
        if proc.returncode or not lines:
            sys.exit(f"{side} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
        results[side] = json.loads(lines[-1][len("RESULT ") :])
    return results


def train_on_titles(**settings) -> tuple[list[dict], dict]:
    """`gentune train` (the library call) on ACLSum abstract -> title, the demo's rows and
    instruction, with no validation before the end; `settings` are TrainConfig's (method,
    max_steps, precision, ...). Returns the run's log rows (metrics.csv) and its manifest's
    stats; the run directory (gigabytes of checkpoints for a full fine-tune) is deleted."""
    import tempfile
    from pathlib import Path

    from gentune.config import TrainConfig
    from gentune.demo import INSTRUCTION, aclsum_rows, write_jsonl
    from gentune.rundir import read_log, read_manifest
    from gentune.training.train import train

    with tempfile.TemporaryDirectory(prefix="gentune-bench-") as where:
        tmp = Path(where)
        data = write_jsonl(tmp / "train.jsonl", aclsum_rows("train"))
        val = write_jsonl(tmp / "val.jsonl", aclsum_rows("val")[:2])
        cfg = TrainConfig(
            task="summarization",
            data=str(data),
            val=str(val),
            out=str(tmp / "run"),
            instruction=INSTRUCTION,
            eval_generate=0,
            eval_every=10**6,
            progress=False,
            tensorboard=False,
            **settings,
        )
        train(cfg, log=lambda *_: None)
        return read_log(tmp / "run"), read_manifest(tmp / "run")["stats"]
