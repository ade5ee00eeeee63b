"""explain.html: a self-contained page (no network). Above, the aggregates; below, each output
with its tokens coloured by shift class (or, switched, by Δ log-prob), each model's
alternatives on hover, and (with --attribution) the input coloured by gradient × input."""

from __future__ import annotations

import html
import json
from pathlib import Path

from gentune.inference.report import pyplot
from gentune.trust.page_checks import render_checks

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; max-width: 1200px; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
td, th { border: 1px solid #ccc; padding: 3px 8px; text-align: left; vertical-align: top; }
.tok { white-space: pre-wrap; border-radius: 3px; cursor: default; }
.by-shift .unshifted { background: #eef6ee; } .by-shift .marginal { background: #fff1b8; }
.by-shift .shifted { background: #ffb3a7; }
.by-delta .tok { background: var(--d); }
.row { border-top: 1px solid #ddd; padding: 0.6em 0; }
.src { color: #555; font-size: 0.9em; }
.attr { background: rgba(40, 90, 220, var(--a)); }
#tip { position: fixed; display: none; background: #fff; border: 1px solid #888;
       padding: 6px 8px; font-size: 0.85em; box-shadow: 2px 2px 6px #0003; z-index: 9; }
img { max-width: 640px; }
"""

SCRIPT = """
const tip = document.getElementById('tip');
document.querySelectorAll('.tok').forEach(el => {
  el.addEventListener('mouseenter', e => {
    const d = JSON.parse(el.dataset.info);
    const alt = xs => xs.map(([t, p]) => `${JSON.stringify(t)} ${(100 * p).toFixed(1)}%`).join('<br>');
    tip.innerHTML = `<b>${d.cls}</b> (base rank ${d.rank}); Δ log-prob ${d.delta.toFixed(3)};
      KL ${d.kl.toFixed(3)}<table><tr><th>tuned</th><th>base</th></tr>
      <tr><td>${alt(d.top_tuned)}</td><td>${alt(d.top_base)}</td></tr></table>`;
    tip.style.display = 'block';
    tip.style.left = (e.clientX + 12) + 'px'; tip.style.top = (e.clientY + 12) + 'px';
  });
  el.addEventListener('mouseleave', () => { tip.style.display = 'none'; });
});
document.getElementById('view').addEventListener('change', e => {
  document.body.className = e.target.value;
});
"""


def shift_plot(by_position: list[dict], path: Path) -> Path | None:
    """The shift rate by output position as a PNG beside the page (and for the README)."""
    if not by_position:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 3.0), dpi=100)
    ax.bar([p["position"] for p in by_position], [100 * p["shifted"] for p in by_position])
    ax.set_xlabel("output position (tokens)")
    ax.set_ylabel("% shifted (rank > 3 under base)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def render(result: dict, *, plot_name: str | None) -> str:
    """The page for explain.json's numbers."""
    esc = html.escape
    t = result["tokens"]
    summary = (
        f"<p>{esc(str(result['run']))} against <code>{esc(str(result['base']))}</code> on "
        f"{result['rows']} rows of <code>{esc(str(result['data']))}</code>: "
        f"{t['positions']} output positions, <b>{100 * t['shifted']:.1f} % shifted</b>, "
        f"{100 * t['marginal']:.1f} % marginal, {100 * t['unshifted']:.1f} % unshifted; mean "
        f"KL(tuned‖base) {t['kl_mean']:.3f} nats; entropy tuned {t['entropy_tuned_mean']:.2f}, "
        f"base {t['entropy_base_mean']:.2f} nats. {result['prompts_shortened']} prompts "
        f"shortened by the run's rule. {result['seconds']} s, peak RSS "
        f"{result['peak_rss_mb']} MiB.</p>"
    )
    plot = (
        f"<h2>Shift rate by output position</h2><img alt='shift rate by position' "
        f"src='{esc(plot_name)}'>"
        if plot_name
        else ""
    )
    body = [
        "<h1>gentune explain</h1>",
        summary,
        plot,
        _token_tables(t),
        _memorisation(result.get("memorisation"), result.get("reference")),
        _attribution(result.get("attribution")),
        render_checks(result["checks"]) if result.get("checks") else "",
        "<h2>Outputs</h2><p><label>colour by <select id='view'>"
        "<option value='by-shift'>shift class</option>"
        "<option value='by-delta'>Δ log-prob (green: tuned gained)</option></select></label>"
        " · hover a token for both models' alternatives</p>",
        *(_row(r) for r in result["rows_detail"]),
        "<div id='tip'></div>",
        f"<script type='application/json' id='numbers'>{esc(json.dumps(_numbers(result)))}"
        "</script>",
    ]
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>gentune explain: {esc(str(result['run']))}</title><style>{STYLE}</style>"
        f"</head><body class='by-shift'>{''.join(body)}<script>{SCRIPT}</script></body></html>"
    )


def _numbers(result: dict) -> dict:
    return {k: v for k, v in result.items() if k != "rows_detail"}


def _token_tables(t: dict) -> str:
    esc = html.escape

    def table(title: str, rows: list[dict]) -> str:
        body = "".join(
            f"<tr><td><code>{esc(repr(r['token']))}</code></td><td>{r['count']}</td>"
            f"<td>{r['delta_sum']:+.2f}</td><td>{r['delta_mean']:+.3f}</td></tr>"
            for r in rows
        )
        return (
            f"<h3>{title}</h3><table><tr><th>token</th><th>count</th><th>Σ Δ log-prob</th>"
            f"<th>mean</th></tr>{body}</table>"
        )

    shifted = "".join(
        f"<tr><td>{esc(r['row'])}</td><td>{r['shifted']} of {r['tokens']}</td></tr>"
        for r in t["most_shifted_rows"]
    )
    return (
        "<h2>What changed</h2>"
        + table("Tokens the tuned model gained probability on (its outputs)", t["gained"])
        + table("Tokens it lost: the base's first choice where it wrote another", t["lost"])
        + f"<h3>Rows with the most shifted positions</h3><table>{shifted}</table>"
    )


def _memorisation(m: dict | None, reference: dict | None) -> str:
    if reference is None:
        return "<h2>Memorisation</h2><p>No row has a reference: skipped.</p>"
    ref = (
        f"<p>On the references ({reference['tokens']} tokens of {reference['rows']} rows): "
        f"mean Δ log-prob per token {reference['delta_logprob_mean']:+.3f}; mean log p(target) "
        f"tuned {reference['logp_tuned_mean']:.1f}, base {reference['logp_base_mean']:.1f}."
        + (
            f" Left out (target too long): {len(reference['left_out'])}."
            if reference["left_out"]
            else ""
        )
        + "</p>"
    )
    if m is None:
        return f"<h2>Memorisation</h2>{ref}<p>No training rows to compare with: skipped.</p>"

    def gap(name: str, g: dict, scale: float = 1.0) -> str:
        return (
            f"<tr><td>{name}</td><td>{scale * g['train']:.2f}</td><td>{scale * g['heldout']:.2f}"
            f"</td><td>{scale * g['gap']:+.2f} [{scale * g['ci'][0]:+.2f}, "
            f"{scale * g['ci'][1]:+.2f}]</td></tr>"
        )

    mb, ex, rp = m["membership"], m["extraction"], m["reproduced"]
    secrets = "".join(
        f"<li>{html.escape(x['row'])}: {html.escape(x['kind'])} <code>{html.escape(x['text'])}"
        f"</code>{' — <b>also in the training data</b>' if x['in_training'] else ''}</li>"
        for x in m["secrets"]
    )
    return (
        f"<h2>Memorisation</h2>{ref}<p>{m['sampled']} of {m['train_rows']} training rows "
        f"against the held-out rows ({m['heldout_in_training']} held-out rows are (nearly) "
        "training rows).</p><table><tr><th></th><th>training rows</th><th>held-out rows</th>"
        "<th>gap [95% CI]</th></tr>"
        + gap("exact match %", m["exact_match"], 100)
        + gap("ROUGE-L", m["rougeL"])
        + "</table>"
        f"<p>Membership: AUC of log p_tuned(target) − log p_base(target) between training "
        f"and held-out rows <b>{mb['auc']:.3f}</b> [{mb['ci'][0]:.3f}, {mb['ci'][1]:.3f}] "
        "(0.5: no signal). Extraction: "
        f"{100 * ex['share_above']:.1f} % of training targets have p(target) > {ex['threshold']}"
        f" (mean {ex['mean']:.3g}). Held-out outputs that reproduce a training target: "
        f"{rp['exact']} exactly, {rp['near']} nearly, of {rp['rows']}"
        + (f" ({html.escape('; '.join(rp['examples']))})" if rp["examples"] else "")
        + ".</p>"
        + (f"<p>Secrets or personal data in outputs:</p><ul>{secrets}</ul>" if secrets else "")
    )


def _attribution(a: dict | None) -> str:
    if not a:
        return ""
    return (
        "<h2>Attribution (gradient × input)</h2><p>Share of each output's attribution on source "
        f"words the output copies: tuned {100 * a['copied_share_tuned']:.1f} %, base "
        f"{100 * a['copied_share_base']:.1f} % (mean over rows; {a['seconds']} s for both "
        "models). Each row's input below is coloured by it (blue: more).</p>"
    )


def _row(r: dict) -> str:
    esc = html.escape
    spans = []
    for t in r["tokens"]:
        cls = "unshifted" if t["rank"] == 1 else "marginal" if t["rank"] <= 3 else "shifted"
        d = max(-1.0, min(1.0, t["delta"] / 3))
        colour = f"rgba(40,160,60,{d:.2f})" if d >= 0 else f"rgba(210,50,40,{-d:.2f})"
        info = {**{k: t[k] for k in ("rank", "delta", "kl", "top_tuned", "top_base")}, "cls": cls}
        spans.append(
            f"<span class='tok {cls}' style='--d:{colour}' data-info='{esc(json.dumps(info))}'>"
            f"{esc(t['text'])}</span>"
        )
    source = ""
    if "attribution" in r:
        source = "".join(
            f"<div class='src'>{who}: "
            + "".join(
                f"<span class='attr' style='--a:{min(1.0, 5 * a):.2f}'>{esc(x)}</span>"
                for x, a in zip(r["input"], r["attribution"][who], strict=False)
            )
            + "</div>"
            for who in ("tuned", "base")
        )
    reference = f"<div class='src'>reference: {esc(r['reference'])}</div>" if r["reference"] else ""
    return (
        f"<div class='row'><b>{esc(r['row'])}</b>{source}<div class='out'>{''.join(spans)}"
        f"</div>{reference}</div>"
    )
