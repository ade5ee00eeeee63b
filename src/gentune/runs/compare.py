"""Runs side by side: `gentune runs [DIR…]` lists the runs under directories (status, task,
model, method, data, steps, time, best metric); `gentune runs compare RUN RUN… --out DIR`
writes one page with their curves overlaid, the settings that differ, the final metrics with
paired-bootstrap intervals against the first run where they are scored on the same file, and
each run's samples at the same rows."""

from __future__ import annotations

import html
import json
import os
from pathlib import Path
from typing import Any

from gentune.errors import RunError
from gentune.lock import describe, writer
from gentune.rundir import is_run, read_log, read_samples, run_state, write_json

# settings a run records that say nothing about how it was trained
_NOT_SETTINGS = {"out", "progress", "tensorboard", "resume", "overwrite", "samples"}


def find_runs(dirs: list[str]) -> list[Path]:
    """The run directories at or under each of `dirs` (a run's own sub-directories are not
    searched), sorted by path; a directory that does not exist is named."""
    found: list[Path] = []
    for d in dirs:
        root = Path(d)
        if not root.is_dir():
            raise RunError(f"{d}: no such directory")
        for here, subdirs, _ in os.walk(root):
            if run_state(here) is not None:  # complete or interrupted
                found.append(Path(here))
                subdirs[:] = []  # (its checkpoints, model, tensorboard are not runs)
            else:
                subdirs[:] = sorted(s for s in subdirs if not s.startswith("."))
    return sorted(set(found))


def _json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _log(run: Path) -> list[dict]:
    try:
        return read_log(run)
    except (OSError, ValueError):
        return []


def settings(run: Path) -> dict:
    """The run's training settings as given, with the automatic ones as decided (manifest)."""
    given = _json(run / "train_config.json")
    stats = _json(run / "manifest.json").get("stats", {})
    decided = {c["setting"]: c["value"] for c in stats.get("choices", []) if "setting" in c}
    merged = {**given, **decided}
    return {k: v for k, v in merged.items() if k not in _NOT_SETTINGS}


def summary(run: Path) -> dict:
    """One row of `gentune runs`: what a run is and how far it got."""
    manifest = _json(run / "manifest.json")
    given = _json(run / "train_config.json")
    stats = manifest.get("stats", {})
    log = _log(run)
    best = stats.get("best_metric")  # {metric: value}
    metric = stats.get("metric") or given.get("metric")
    if isinstance(best, dict):
        metric, best = next(iter(best.items()), (metric, None))
    if best is None and log:
        vals = [float(r["val_loss"]) for r in log if r.get("val_loss")]
        best, metric = (min(vals), "val_loss") if vals else (None, metric)
    data = given.get("data") or [d.get("path", "") for d in manifest.get("data", [])]
    files = data if isinstance(data, list) else [data]
    return {
        "run": str(run),
        "status": _status(run),
        "task": manifest.get("task") or given.get("task", ""),
        "model": manifest.get("base_model") or given.get("model", ""),
        "method": manifest.get("method") or given.get("method", ""),
        "data": ", ".join(Path(str(f)).name for f in files),
        "steps": int(log[-1]["step"]) if log else 0,
        "seconds": float(log[-1]["elapsed_s"]) if log else None,
        "best": None if best is None else float(best),
        "metric": metric or "",
    }


def _status(run: Path) -> str:
    """complete, running (a process holds its lock: being trained now), interrupted."""
    state = run_state(run) or "not a run"
    return "running" if state == "interrupted" and writer(run) is not None else state


def table(rows: list[dict]) -> str:
    """The runs as a Markdown table (what `gentune runs` prints)."""
    lines = [
        "| run | status | task | model | method | data | steps | time | best |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['run']} | {r['status']} | {r['task']} | {r['model']} | {r['method']} | "
            f"{r['data']} | {r['steps']} | {_time(r)} | {_best(r)} |"
        )
    return "\n".join(lines)


def _time(r: dict) -> str:
    return "" if r["seconds"] is None else f"{r['seconds']:.0f} s"


def _best(r: dict) -> str:
    return "" if r["best"] is None else f"{r['metric']} {r['best']:.4g}"


def differing(runs: list[Path]) -> dict[str, list]:
    """The settings whose values are not the same in every run: name -> value per run."""
    each = [settings(r) for r in runs]
    keys = sorted(set().union(*each))
    return {
        k: [s.get(k) for s in each] for k in keys if len({json.dumps(s.get(k)) for s in each}) > 1
    }


_CURVES = (
    ("loss", "training loss"),
    ("val_loss", "validation loss"),
    ("val_metric", "validation metric"),
)


def curves(runs: list[Path], names: list[str]) -> dict[str, dict[str, list]]:
    """Each run's logged curves: name -> {loss | val_loss | val_metric: [[step, value], ...]}."""
    out = {}
    for name, run in zip(names, runs, strict=True):
        log = _log(run)
        out[name] = {
            key: [[int(r["step"]), float(r[key])] for r in log if r.get(key)] for key, _ in _CURVES
        }
    return out


def curves_figure(data: dict[str, dict[str, list]]) -> str | None:
    """Training loss, validation loss and validation metric of every run, overlaid."""
    from gentune.inference.report import png_data_uri, pyplot

    if not any(c["loss"] for c in data.values()):
        return None
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.6), dpi=100)
    for ax, (key, title) in zip(axes, _CURVES, strict=True):
        for name, c in data.items():
            if c[key]:
                ax.plot(*zip(*c[key], strict=True), "-" if key == "loss" else "o-", label=name)
        ax.set(title=title, xlabel="step")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:  # (a curve no run has: an empty panel)
            ax.legend(fontsize=8)
    fig.tight_layout()
    return png_data_uri(fig)


def _samples(runs: list[Path]) -> dict[int, dict]:
    """Each sampled row's last output per run: row -> {input, reference, outputs: [...]}."""
    by_row: dict[int, dict] = {}
    for i, run in enumerate(runs):
        rows = read_samples(run)
        last = max((s["step"] for s in rows), default=None)
        for s in rows:
            if s["step"] != last:
                continue
            entry = by_row.setdefault(
                s["row"],
                {"input": s["input"], "reference": s["reference"], "outputs": [None] * len(runs)},
            )
            if entry["input"] == s["input"]:  # the same row in every run
                entry["outputs"][i] = s["output"]
    return dict(sorted(by_row.items()))


def scores(runs: list[Path], data: str, out: Path, *, bootstrap: int, progress: bool) -> dict:
    """Every run scored on `data` (the same rows, each with its own prompt template); the
    task's metrics with paired-bootstrap intervals of each run against the first."""
    from gentune.data.tasks import get_task
    from gentune.inference.evaluate import evaluate_models
    from gentune.metrics import REFERENCE_METRICS, paired_bootstrap

    evals = [
        evaluate_models(str(run), data, out / f"run-{i + 1}", progress=progress)
        for i, run in enumerate(runs)
    ]
    tasks = {e.template.task for e in evals}
    if len(tasks) > 1:
        raise RunError(
            f"the runs are of different tasks ({', '.join(sorted(tasks))}): not comparable"
        )
    references = [r["reference"] for r in evals[0].rows]
    if any(ref is None for ref in references):
        raise RunError(f"{data}: every row needs a reference to compare the runs' metrics")
    metrics = [m for m in get_task(tasks.pop()).metrics if m in REFERENCE_METRICS]
    first = [r["output"] for r in evals[0].rows]
    table = []
    for name in metrics:
        row: dict[str, Any] = {
            "metric": name,
            "values": [e.result[name] for e in evals],
            "vs_first": [None],
        }
        for e in evals[1:]:
            other = [r["output"] for r in e.rows]
            row["vs_first"].append(
                paired_bootstrap(name, first, other, references, samples=bootstrap)
            )
        table.append(row)
    return {"data": data, "rows": len(references), "metrics": table}


def _metrics_html(result: dict, names: list[str]) -> str:
    esc = html.escape
    head = "".join(f"<th>{esc(n)}</th>" for n in names)
    lines = []
    for m in result["metrics"]:
        cells = []
        for v, d in zip(m["values"], m["vs_first"], strict=True):
            value = "" if v is None else f"{v:.2f}"
            if d is not None:
                lo, hi = d["ci"]
                value += f"<br><small>{d['difference']:+.2f} [{lo:+.2f}, {hi:+.2f}]</small>"
            cells.append(f"<td>{value}</td>")
        lines.append(f"<tr><td>{esc(m['metric'])}</td>{''.join(cells)}</tr>")
    return (
        f"<h2>Final metrics on {esc(result['data'])} ({result['rows']} rows)</h2>"
        "<p>Under each run after the first: its difference from the first run with the 95 % "
        "interval of a paired bootstrap (the same rows resampled for both).</p>"
        f"<table class='metrics'><tr><th>metric</th>{head}</tr>{''.join(lines)}</table>"
    )


def compare(
    runs: list[str], out: str | Path, *, data: str | None = None, bootstrap: int = 1000,
    progress: bool = True,
) -> Path:  # fmt: skip
    """OUT/compare.html (and compare.json): the runs' curves overlaid, the settings that
    differ, their metrics on `data` with intervals against the first run, their samples."""
    if len(runs) < 2:
        raise RunError("runs compare needs at least two runs")
    paths = [Path(r) for r in runs]
    for p in paths:
        if run_state(p) == "interrupted":
            if (holder := writer(p)) is not None:
                raise RunError(f"{p}: still being trained ({describe(holder)}); compare it later")
            raise RunError(f"{p}: an interrupted run; compare complete runs")
        if not is_run(p):
            raise RunError(f"{p}: not a gentune run directory")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    names = [f"{i + 1}: {p.name}" for i, p in enumerate(paths)]
    diffs = differing(paths)
    result = scores(paths, data, out, bootstrap=bootstrap, progress=progress) if data else None
    samples = _samples(paths)
    lines = curves(paths, names)
    summaries = [summary(p) for p in paths]
    write_json(
        out / "compare.json",
        {
            "runs": [str(p) for p in paths],
            "summaries": summaries,
            "differing_settings": diffs,
            "curves": lines,
            "metrics": result,
            "samples": {str(k): v for k, v in samples.items()},
        },
    )
    page = _page(summaries, names, diffs, result, samples, curves_figure(lines))
    (out / "compare.html").write_text(page)
    return out / "compare.html"


def _page(summaries, names, diffs, result, samples, curves) -> str:
    esc = html.escape
    head = "".join(f"<th>{esc(n)}</th>" for n in names)
    status = "".join(
        f"<tr><td>{esc(n)}</td><td><code>{esc(s['run'])}</code></td><td>{esc(s['status'])}</td>"
        f"<td>{s['steps']}</td><td>{_time(s)}</td><td>{esc(_best(s))}</td></tr>"
        for n, s in zip(names, summaries, strict=True)
    )
    setting_rows = "".join(
        f"<tr class='setting'><td>{esc(k)}</td>"
        + "".join(f"<td>{esc(json.dumps(v))}</td>" for v in values)
        + "</tr>"
        for k, values in diffs.items()
    )
    sample_rows = "".join(
        f"<tr><td>{row}</td><td><pre>{esc(s['input'])}</pre></td><td>{esc(s['reference'] or '')}</td>"
        + "".join(f"<td>{esc(o) if o is not None else ''}</td>" for o in s["outputs"])
        + "</tr>"
        for row, s in samples.items()
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>gentune: runs compared</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; max-width: 1400px; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; }}
td, th {{ border: 1px solid #ccc; padding: 4px 8px; vertical-align: top; text-align: left; }}
pre {{ white-space: pre-wrap; max-height: 10em; overflow: auto; margin: 0; max-width: 360px; }}
img {{ max-width: 100%; }}
</style></head><body>
<h1>gentune: runs compared</h1>
<table class="runs"><tr><th>run</th><th>path</th><th>status</th><th>steps</th><th>time</th><th>best</th></tr>{status}</table>
<h2>Settings that differ</h2>
{f"<table class='settings'><tr><th>setting</th>{head}</tr>{setting_rows}</table>" if setting_rows else "<p>None: the runs share every setting.</p>"}
<h2>Curves</h2>
{f"<img id='curves' alt='loss and metric curves of every run' src='{curves}'>" if curves else "<p>No run has logged a step.</p>"}
{_metrics_html(result, names) if result else "<p>No file scored: <code>--data FILE</code> scores every run on the same rows, with intervals.</p>"}
<h2>Samples at the same rows (each run's last validation)</h2>
{f"<table class='samples'><tr><th>row</th><th>input</th><th>reference</th>{head}</tr>{sample_rows}</table>" if sample_rows else "<p>No samples (runs trained with <code>--samples 0</code>, or before they existed).</p>"}
</body></html>
"""
