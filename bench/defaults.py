"""The sweep gentune's training defaults were chosen with: candidate recipes on the `dev` rows
of held-out sets (bench/heldout.py), never on the `test` rows bench/vs_trl.py reports.

    .venv/bin/python bench/defaults.py [--sets aclsum-title de-en] \\
        --candidates "--method full --lr 1e-4 --epochs 1" "--method lora --epochs 3"

A candidate may start with NAME=value words: the environment its training runs in.

For each set and candidate: `gentune train` on the set's `train` rows (plus the candidate's
flags; "" = gentune's defaults as they are), then `gentune evaluate` on its `dev` rows. Prints
training seconds, peak RSS and the dev metrics, one table per set.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))

import heldout  # noqa: E402
from vs_trl import _child  # noqa: E402


def _outputs(run: Path) -> tuple[list[str], list[str]]:
    rows = [json.loads(line) for line in (run / "dev-eval" / "predictions.jsonl").open()]
    return [r["output"] for r in rows], [r["reference"] for r in rows]


def _against_first(name: str, runs: list[Path], candidates: list[str]) -> list[str]:
    """Each later candidate minus the first on the same dev rows: the headline metric's paired
    bootstrap difference and 95 % interval (1000 resamples, seed 0)."""
    from gentune.metrics import paired_bootstrap

    metric = heldout.SETS[name].metric
    first, refs = _outputs(runs[0])
    lines = [f"\n| candidate − `{candidates[0] or 'defaults'}` | {metric} [95% CI] |", "|---|---|"]
    for run, flags in zip(runs[1:], candidates[1:], strict=True):
        r = paired_bootstrap(metric, first, _outputs(run)[0], refs)
        lines.append(
            f"| `{flags or 'defaults'}` | {r['difference']:+.2f} "
            f"[{r['ci'][0]:+.2f}, {r['ci'][1]:+.2f}] |"
        )
    return lines


def _env_and_flags(candidate: str) -> tuple[dict[str, str], list[str]]:
    """A candidate's leading NAME=value words (its training's environment) and its flags."""
    words = shlex.split(candidate)
    env = {}
    while words and "=" in words[0] and not words[0].startswith("-"):
        key, value = words.pop(0).split("=", 1)
        env[key] = value
    return env, words


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sets", nargs="+", default=["aclsum-title", "de-en"])
    ap.add_argument("--candidates", nargs="+", default=[""])
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    work = Path(a.out) if a.out else Path(tempfile.mkdtemp(prefix="defaults-"))
    tables = []
    for name in a.sets:
        files = heldout.write(name, work / "data")
        lines = [
            f"\n{name} ({heldout.SETS[name].task}), dev rows",
            "| candidate | method | steps | training s | peak RSS MiB | rougeL | bleu | chrf |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for i, flags in enumerate(a.candidates):
            run = work / f"{name}-{i}"
            env, argv = _env_and_flags(flags)
            side = _child(
                "gentune", "--set", name, "--data", str(files["train"]), "--out", str(run),
                *argv, env=env,
            )  # fmt: skip
            subprocess.run(
                [sys.executable, "-m", "gentune", "evaluate", str(run), "--data",
                 str(files["dev"]), "--out", str(run / "dev-eval"), "--no-progress"],
                check=True, stdout=subprocess.DEVNULL,
            )  # fmt: skip
            m = json.loads((run / "dev-eval" / "metrics.json").read_text())
            cells = [
                f"{m[k]:.2f}" if m.get(k) is not None else "–" for k in ("rougeL", "bleu", "chrf")
            ]
            lines.append(
                f"| `{flags or 'defaults'}` | {side['method']} | {side['steps']} "
                f"| {side['seconds']:.1f} | {side['peak_rss_mib']:.0f} | "
                + " | ".join(cells)
                + " |"
            )
            print(lines[-1], flush=True)
        paired = _against_first(
            name, [work / f"{name}-{i}" for i in range(len(a.candidates))], a.candidates
        )
        print("\n".join(paired), flush=True)
        lines += paired
        tables += lines
    print("\n".join(tables))


if __name__ == "__main__":
    main()
