"""Pictures of a run: the loss curve (PNG). matplotlib is imported lazily."""

from __future__ import annotations

import html
from pathlib import Path

from gentune.metrics import row_score
from gentune.rundir import read_log, read_samples


def loss_curve_png(history: list[dict], path: str | Path) -> Path | None:
    """Training loss per step, validation loss where measured, learning rate on a second axis."""
    if not history:
        return None
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    steps = [int(r["step"]) for r in history]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    ax.plot(steps, [float(r["loss"]) for r in history], label="train loss", lw=1.2)
    val = [
        (int(r["step"]), float(r["val_loss"]))
        for r in history
        if r.get("val_loss") not in (None, "")
    ]
    if val:
        ax.plot(*zip(*val, strict=True), "o-", label="validation loss", lw=1.2)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (nll per target token)")
    lr_ax = ax.twinx()
    lr_ax.plot(
        steps,
        [float(r["lr"]) for r in history],
        color="grey",
        alpha=0.4,
        lw=1,
        label="learning rate",
    )
    lr_ax.set_ylabel("learning rate")
    lines = ax.get_legend_handles_labels()
    lr_lines = lr_ax.get_legend_handles_labels()
    ax.legend(lines[0] + lr_lines[0], lines[1] + lr_lines[1], loc="upper right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


# ---- the evaluation report (report.html) ---------------------------------------------------
def png_data_uri(fig) -> str:
    """A figure as an inline PNG (data URI); the figure is closed."""
    import base64
    import io

    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def pyplot():
    """matplotlib.pyplot without a display (imported when first needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def curves_figure(history: list[dict]) -> str | None:
    """Loss and learning-rate curves of a run, as a data URI."""
    if not history:
        return None
    plt = pyplot()
    steps = [int(r["step"]) for r in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.4), dpi=100)
    ax1.plot(steps, [float(r["loss"]) for r in history], label="train")
    val = [(int(r["step"]), float(r["val_loss"])) for r in history if r.get("val_loss")]
    if val:
        ax1.plot(*zip(*val, strict=True), "o-", label="validation")
    ax1.set(title="loss (nll per target token)", xlabel="step")
    ax1.legend()
    ax1.grid(alpha=0.3)
    ax2.plot(steps, [float(r["lr"]) for r in history], color="tab:green")
    ax2.set(title="learning rate", xlabel="step")
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    return png_data_uri(fig)


def lengths_figure(references: list[str], base: list[str], tuned: list[str]) -> str:
    """Histograms of output and reference lengths (words), as a data URI."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.4), dpi=100)
    data = {"reference": references, "base": base, "fine-tuned": tuned}
    lengths = {k: [len(t.split()) for t in v] for k, v in data.items() if v}
    top = max((max(v) for v in lengths.values() if v), default=1)
    bins = min(30, max(5, top))
    for name, values in lengths.items():
        ax.hist(values, bins=bins, range=(0, top), alpha=0.45, label=name)
    ax.set(title="length of outputs and references", xlabel="words", ylabel="rows")
    ax.legend()
    fig.tight_layout()
    return png_data_uri(fig)


def _metric_rows(comparison: dict) -> str:
    """The metric table's rows: base, fine-tuned, the difference coloured by its direction, its
    interval (✔ where it excludes 0 in the better direction)."""
    esc, rows = html.escape, []
    for m in comparison["metrics"]:
        ci = m.get("ci")
        hib = m["higher_is_better"]
        better = hib is not None and (m["difference"] > 0) == hib and m["difference"] != 0
        css = "" if hib is None else "win" if better else "loss"
        direction = (
            "no direction" if hib is None else "higher is better" if hib else "lower is better"
        )
        ci_text = f"[{ci[0]:+.2f}, {ci[1]:+.2f}]" if ci else "–"
        sig = ""
        if ci:
            sig = " ✔" if (ci[0] > 0 if m["higher_is_better"] else ci[1] < 0) else ""
        rows.append(
            f"<tr><td>{esc(m['metric'])}</td><td>{m['base']:.2f}</td><td>{m['tuned']:.2f}</td>"
            f"<td class='{css}'>{m['difference']:+.2f}</td><td>{ci_text}{sig}</td>"
            f"<td>{direction}; {esc(m['unit'])}</td></tr>"
        )
    return "".join(rows)


def _images(run_dir: str | None, base_rows: list[dict], tuned_rows: list[dict]) -> str:
    """The run's training curves and the length histograms, as inline PNGs."""
    esc, images = html.escape, []
    refs = [r["reference"] for r in tuned_rows]
    if run_dir:
        try:
            curves = curves_figure(read_log(run_dir))
        except FileNotFoundError:
            curves = None
        if curves:
            images.append(("Training curves", curves))
    if all(r is not None for r in refs):
        outputs = [r["output"] for r in base_rows], [r["output"] for r in tuned_rows]
        images.append(("Lengths", lengths_figure(refs, *outputs)))
    return "".join(f"<h2>{esc(t)}</h2><img alt='{esc(t)}' src='{uri}'>" for t, uri in images)


def _explanations(run_dir: str | None, report: Path) -> str:
    """Links to the run's `gentune explain` pages (RUN/explanations.json), relative to the
    report."""
    import json
    import os

    if not run_dir:
        return ""
    try:
        pages = json.loads((Path(run_dir) / "explanations.json").read_text())
    except (OSError, ValueError):
        return ""
    links = "".join(
        f"<li><a href='{html.escape(os.path.relpath(p, report.resolve().parent))}'>"
        f"{html.escape(p)}</a></li>"
        for p in pages
        if Path(p).exists()
    )
    return f"<h2>What fine-tuning changed (gentune explain)</h2><ul>{links}</ul>" if links else ""


def _by_row(samples: list[dict]) -> list[dict]:
    """Per sampled row, its outputs from the first validation to the last:
    [{row, input, reference, steps: [(step, output, score), ...]}], rows in order."""
    by_row: dict[int, dict] = {}
    for s in sorted(samples, key=lambda s: (s["row"], s["step"])):
        entry = by_row.setdefault(
            s["row"],
            {"row": s["row"], "input": s["input"], "reference": s["reference"], "steps": []},
        )
        entry["steps"].append((s["step"], s["output"], s["score"]))
    return list(by_row.values())


def _changes(run_dir: str | None) -> str:
    """How the outputs changed: the run's samples (RUN/samples.jsonl, written at each
    validation) from the first validation to the last."""
    samples = read_samples(run_dir) if run_dir else []
    esc, tables = html.escape, []
    for entry in _by_row(samples):
        steps = "".join(
            f"<tr><td>{step}</td><td>{esc(output)}</td>"
            f"<td>{'' if score is None else f'{score:.1f}'}</td></tr>"
            for step, output, score in entry["steps"]
        )
        tables.append(
            f"<h3>row {entry['row']}</h3><pre>{esc(entry['input'])}</pre>"
            f"<p>reference: {esc(entry['reference'] or '')}</p>"
            f"<table class='changes'><tr><th>step</th><th>output</th>"
            f"<th>{esc(samples[0]['metric'])}</th></tr>{steps}</table>"
        )
    if not tables:
        return ""
    return "<h2>How the outputs changed during training</h2>" + "".join(tables)


def _samples(task: str, base_rows, tuned_rows, samples: int, extremes: int) -> str:
    """Side-by-side samples: the first rows, the biggest wins and the biggest losses."""
    esc = html.escape
    if not tuned_rows or any(r["reference"] is None for r in tuned_rows):
        return ""
    deltas = [
        row_score(t["output"], t["reference"], task) - row_score(b["output"], b["reference"], task)
        for b, t in zip(base_rows, tuned_rows, strict=True)
    ]
    order = sorted(range(len(deltas)), key=lambda i: deltas[i])
    groups = [
        ("Samples", list(range(min(samples, len(tuned_rows))))),
        ("Biggest wins", order[::-1][:extremes]),
        ("Biggest losses", order[:extremes]),
    ]
    metric = "chrF" if task == "translation" else "ROUGE-L"
    sections = []
    for title, idx in groups:
        cards = []
        for i in idx:
            b, t = base_rows[i], tuned_rows[i]
            cards.append(
                f"<tr class='sample'><td>{esc(t['row'])}<br><small>Δ{metric} "
                f"{deltas[i]:+.1f}</small></td><td><pre>{esc(_input_of(t.get('input') or t['prompt']))}</pre>"
                f"</td><td>{esc(t['reference'] or '')}</td><td>{esc(b['output'])}</td>"
                f"<td>{esc(t['output'])}</td></tr>"
            )
        sections.append(
            f"<h2>{title}</h2><table class='samples'><tr><th>row</th><th>input</th>"
            f"<th>reference</th><th>base</th><th>fine-tuned</th></tr>" + "".join(cards) + "</table>"
        )
    return "".join(sections)


def write_report(
    path: str | Path,
    *,
    comparison: dict,
    base_rows: list[dict],
    tuned_rows: list[dict],
    run_dir: str | None = None,
    sections: tuple[str, ...] = (),
    samples: int = 5,
    extremes: int = 3,
) -> Path:
    """A self-contained HTML page (no network): metric table with intervals, the run's loss and
    learning-rate curves, length histograms, and side-by-side samples with the biggest wins and
    losses. `sections`: more HTML, after the metrics (the checks' tables)."""
    import json

    esc = html.escape
    task = comparison["task"]
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>gentune report: {esc(str(comparison.get("model", "")))}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; max-width: 1200px; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; }}
td, th {{ border: 1px solid #ccc; padding: 4px 8px; vertical-align: top; text-align: left; }}
td.win {{ color: #1a7f37; font-weight: 600; }} td.loss {{ color: #b42318; font-weight: 600; }}
table.samples td {{ max-width: 320px; font-size: 0.9em; }}
pre {{ white-space: pre-wrap; max-height: 12em; overflow: auto; margin: 0; }}
img {{ max-width: 100%; }}
</style></head><body>
<h1>gentune evaluation report</h1>
<p>fine-tuned: <code>{esc(str(comparison.get("model", "")))}</code> · base:
<code>{esc(str(comparison.get("base", "")))}</code> · task {esc(task)} · data
<code>{esc(str(comparison.get("data", "")))}</code> · {comparison["rows"]} rows, both models on the
same rows with the same prompt.</p>
<h2>Metrics</h2>
<table class="metrics"><tr><th>metric</th><th>base</th><th>fine-tuned</th><th>Δ</th>
<th>95% interval of Δ (paired bootstrap)</th><th>unit</th></tr>
{_metric_rows(comparison)}</table>
<p><small>✔: the interval excludes 0 in the better direction. Seed {comparison.get("seed")}.
</small></p>
{"".join(sections)}
{_images(run_dir, base_rows, tuned_rows)}
{_explanations(run_dir, Path(path))}
{_changes(run_dir)}
{_samples(task, base_rows, tuned_rows, samples, extremes)}
<script type="application/json" id="comparison">{esc(json.dumps(comparison))}</script>
</body></html>
"""
    Path(path).write_text(page)
    return Path(path)


def _input_of(prompt: str) -> str:
    """The input (or the whole prompt), trimmed for display."""
    text = prompt.strip()
    return text if len(text) < 1500 else text[:1500] + " …"
