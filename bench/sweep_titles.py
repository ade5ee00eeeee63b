"""A sweep of the embedded model on ACLSum titles, against gentune's defaults, on held-out rows.

    .venv/bin/python bench/sweep_titles.py [--out DIR] [--trials 8] [--workers 2] \\
        [--time-budget 1800]

1. `gentune sweep`: the base recipe is the titles set's `train` rows (100 papers) with its `dev`
   rows (50) as validation rows; the objective is ROUGE-L on those 50 rows. The space: the
   method, learning rate, epochs, batch size and LoRA rank.
2. `gentune train --config base.yaml` (the defaults on the same rows) and
   `gentune train --config best.yaml` (the sweep's best settings).
3. `gentune runs compare DEFAULTS BEST --data test.jsonl`: both scored on the 100 `test`
   papers no choice looked at, the difference with a paired-bootstrap interval.

Prints the trials' table and the test comparison (markdown).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).parent))
import heldout  # noqa: E402

SPACE = {
    "method": ["lora", "full"],
    "lr": {"low": 3e-5, "high": 2e-3, "log": True},
    "epochs": [1, 2, 3],
    "batch_size": [4, 8],
    "lora_r": [8, 16, 32],
}


def gentune(*args: str) -> float:
    """Run a gentune command; its seconds."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "gentune", *args], check=True)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None)
    ap.add_argument("--trials", type=int, default=8)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--time-budget", type=float, default=1800)
    a = ap.parse_args()
    work = Path(a.out) if a.out else Path(tempfile.mkdtemp(prefix="sweep-titles-"))
    files = heldout.write("aclsum-title", work / "data")
    spec = heldout.SETS["aclsum-title"]
    base = {
        "task": spec.task,
        "instruction": spec.flags[1],
        "data": str(files["train"]),
        "val": str(files["dev"]),
        "out": str(work / "defaults"),
    }
    (work / "base.yaml").write_text(yaml.safe_dump(base, sort_keys=False))
    (work / "space.yaml").write_text(yaml.safe_dump(SPACE, sort_keys=False))
    sweep_s = gentune(
        "sweep", "--config", str(work / "base.yaml"), "--space", str(work / "space.yaml"),
        "--out", str(work / "sweep"), "--trials", str(a.trials), "--workers", str(a.workers),
        "--time-budget", str(a.time_budget),
    )  # fmt: skip
    defaults_s = gentune("train", "--config", str(work / "base.yaml"), "--no-progress")
    best_s = gentune("train", "--config", str(work / "sweep" / "best.yaml"), "--no-progress")
    gentune(
        "runs", "compare", str(work / "defaults"), str(work / "sweep" / "best-run"),
        "--data", str(files["test"]), "--out", str(work / "test-compare"), "--no-progress",
    )  # fmt: skip
    result = json.loads((work / "test-compare" / "compare.json").read_text())
    print(
        f"\nsweep {sweep_s:.0f} s; defaults trained in {defaults_s:.0f} s, best in {best_s:.0f} s"
    )
    print((work / "sweep" / "trials.csv").read_text())
    print(json.dumps(result["metrics"], indent=1)[:4000])
    print(f"work: {work}")


if __name__ == "__main__":
    main()
