"""Data that need not fit in memory: time to the first optimizer step and peak memory of
`gentune train` against the number of rows, with the data cache empty and then filled.

    .venv/bin/python bench/scale.py                      # 2,000 and 200,000 rows
    .venv/bin/python bench/scale.py --rows 2000 20000    # other sizes

The rows are made from ACLSum (`pip install --no-deps aclsum`): a window of 38-64 words of a
paper's abstract, introduction or conclusion -> the paper's title, drawn with a fixed seed, so
every size has the same kind of row (about 430 bytes of JSONL each; 200,000 rows are 85 MB).

Every size runs `gentune train` twice with every default (the embedded model; `--max-steps 2`)
in a child process, with its own empty data cache for the first run. The bench reads the
child's /proc status while it runs: its peak RSS (VmHWM), and its anonymous and file-backed
RSS when metrics.csv gets its first row (the first optimizer step is done); then it stops the
child. File-backed pages are the cache's memory-mapped table (and the model's files): the
kernel drops them under pressure, anonymous memory it cannot.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))


def make_rows(n: int, path: Path, seed: int = 0) -> Path:
    """n rows {input: a window of a paper's text, output: its title}, as JSONL."""
    from gentune.demo import _detok, aclsum_root

    papers = []
    for split in ("train", "val", "test"):
        with (aclsum_root() / f"{split}.jsonl").open() as f:
            for line in f:
                doc = json.loads(line)
                words = " ".join(
                    _detok(doc["sentences"][part])
                    for part in ("abstract", "introduction", "conclusion")
                    if part in doc["sentences"]
                ).split()
                papers.append((words, doc["title"]))
    rng = random.Random(seed)
    with path.open("w") as f:
        for _ in range(n):
            words, title = papers[rng.randrange(len(papers))]
            size = rng.randint(38, 64)
            start = rng.randrange(max(1, len(words) - size))
            row = {"input": " ".join(words[start : start + size]), "output": title}
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


def _status(pid: int) -> dict[str, float]:
    """VmHWM, RssAnon and RssFile of a process, in MiB."""
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmHWM", "RssAnon", "RssFile"):
                out[key] = int(value.split()[0]) / 1024
    except (OSError, ValueError):
        pass
    return out


def run(data: Path, home: Path, out: Path) -> dict:
    """One `gentune train` up to its first optimizer step."""
    env = {**os.environ, "GENTUNE_HOME": str(home)}
    cmd = [sys.executable, "-m", "gentune", "train", "--data", str(data), "--out", str(out)]
    cmd += ["--task", "summarization", "--max-steps", "2", "--no-progress"]
    started = time.time()
    log = (out.parent / f"{out.name}.log").open("w")
    child = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    seen: dict[str, float] = {}
    first_step = None
    while child.poll() is None:
        status = _status(child.pid)
        if status:
            seen = status
        metrics = out / "metrics.csv"
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 2:
            first_step = time.time() - started
            break
        time.sleep(0.05)
    if first_step is None:
        raise SystemExit(f"the run ended before its first step; see {log.name}")
    child.send_signal(signal.SIGKILL)
    child.wait()
    return {"first_step_s": first_step, **seen}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[2000, 200_000])
    parser.add_argument("--keep", help="keep the data and logs in this folder")
    args = parser.parse_args()
    from gentune.config import gentune_home

    work = Path(args.keep or tempfile.mkdtemp(prefix="gentune-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    results = []
    for n in args.rows:
        data = make_rows(n, work / f"rows-{n}.jsonl")
        mb = data.stat().st_size / 2**20
        home = work / f"home-{n}"  # its own data cache; the converted models are shared
        shutil.rmtree(home, ignore_errors=True)
        home.mkdir()
        (home / "models").symlink_to(gentune_home() / "models")
        for label in ("first (empty cache)", "second (cached)"):
            out = work / f"run-{n}-{label.split()[0]}"
            shutil.rmtree(out, ignore_errors=True)
            r = run(data, home, out)
            results.append({"rows": n, "mb": mb, "run": label, **r})
            print(json.dumps(results[-1]), flush=True)
    print()
    print("| rows | file | run | time to first step | peak RSS | anonymous RSS | file-backed RSS |")
    print("|---:|---:|---|---:|---:|---:|---:|")
    for r in results:
        print(
            f"| {r['rows']:,} | {r['mb']:.0f} MB | {r['run']} | {r['first_step_s']:.1f} s | "
            f"{r.get('VmHWM', 0):,.0f} MiB | {r.get('RssAnon', 0):,.0f} MiB | "
            f"{r.get('RssFile', 0):,.0f} MiB |"
        )
    if not args.keep:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
