"""The checks as HTML (a section of the evaluation report and of the explain page) and as one
line each for the terminal."""

from __future__ import annotations

import html

from gentune.inference.report import png_data_uri, pyplot

esc = html.escape


def _ci(ci) -> str:
    return f"[{ci[0]:+.2f}, {ci[1]:+.2f}]" if ci else "–"


def _num(x, digits: int = 2) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def summary_line(name: str, r: dict) -> str:
    """One line of a check's headline numbers."""
    if "note" in r and len(r) <= 2:
        return r["note"]
    if name == "slices":
        fam = {e["family"] for e in r["table"]}
        curve = r.get("curve")
        tail = (
            f"; {curve['score']} nearest minus farthest fifth: tuned {curve['falloff_tuned']:+.2f}, "
            f"base {curve['falloff_base']:+.2f}"
            if curve
            else ""
        )
        return f"{len(r['table'])} slice x metric entries over {', '.join(sorted(fam))}{tail}"
    if name == "perturb":
        return (
            "; ".join(
                f"{e['perturbation']}: drop base {e['base']['drop']:+.2f}, tuned {e['tuned']['drop']:+.2f}"
                for e in r["table"]
            )
            + f" ({r['metric']})"
        )
    if name == "forget":
        w = r["weights"]
        ppl = (
            f"general-text perplexity {r['perplexity_base']:.2f} -> {r['perplexity_tuned']:.2f}, "
            f"KL drift {r['kl_mean']:.4f}; "
            if "kl_mean" in r
            else ""
        )
        return (
            f"{ppl}|dW|/|W| mean {w['relative_change_mean']:.4f} over {w['changed']} changed "
            f"matrices, {w['intruders_total']} intruder directions"
        )
    if name == "faithful":
        t = {e["measure"]: e for e in r["table"]}
        return (
            f"novel 2-grams tuned {_num(t['novel_2gram']['tuned'])} base "
            f"{_num(t['novel_2gram']['base'])} refs {_num(t['novel_2gram']['references'])}; "
            f"coverage tuned {_num(t['coverage']['tuned'])} refs {_num(t['coverage']['references'])}"
        )
    if name == "safety":
        p, c = r["profanity"], r["counterfactual"]
        cf = (
            f"gender swap changed beyond the swap: base {c['base']['changed_beyond_swap']:.2f}, "
            f"tuned {c['tuned']['changed_beyond_swap']:.2f} ({c['rows']} rows)"
            if c["rows"]
            else c["note"]
        )
        return f"profanity base {_num(p['base'])} tuned {_num(p['tuned'])}; {cf}"
    return ""


def render_checks(result: dict) -> str:
    """The checks' section: one table per check, the fall-off plot, each check's time."""
    parts = [f"<h2>Checks beyond the training rows</h2><p>{result['rows']} rows; time per check: "]
    parts.append(", ".join(f"{k} {v} s" for k, v in result["seconds"].items()) + "</p>")
    for name in result["checks"]:
        r = result[name]
        if "note" in r and len(r) <= 2:
            parts.append(f"<h3>{esc(name)}</h3><p>{esc(r['note'])}</p>")
            continue
        parts.append(RENDER[name](r))
    return "\n".join(parts)


def _table(header: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{esc(str(c))}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table class='checks'><tr>{head}</tr>{body}</table>"


def _slices(r: dict) -> str:
    rows = [
        [
            e["family"],
            e["slice"],
            e["rows"],
            e["metric"],
            _num(e["base"]),
            _num(e["tuned"]),
            f"{e['difference']:+.2f}",
            _ci(e["ci"]),
        ]
        for e in r["table"]
    ]
    html_ = "<h3 id='slices'>Slices</h3>" + _table(
        ["slice family", "slice", "rows", "metric", "base", "fine-tuned", "Δ", "95% interval"], rows
    )
    curve = r.get("curve")
    if curve:
        html_ += (
            f"<p>{esc(curve['score'])} of the rows nearest to the training inputs minus the "
            f"farthest (fifths by similarity): fine-tuned {curve['falloff_tuned']:+.2f}, base "
            f"{curve['falloff_base']:+.2f} (mean similarity {r['similarity_mean']:.3f}).</p>"
        )
        html_ += f"<img alt='score by distance to training' src='{falloff_plot(curve)}'>"
    return html_


def falloff_plot(curve: dict) -> str:
    """Both models' per-row score by similarity to the training rows, as a data URI."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=100)
    xs = [p["similarity"] for p in curve["points"]]
    for who, style in (("base", "o--"), ("tuned", "o-")):
        ax.plot(
            xs,
            [p[who] for p in curve["points"]],
            style,
            label="fine-tuned" if who == "tuned" else who,
        )
    ax.set_xlabel("similarity to the nearest training input (bin mean)")
    ax.set_ylabel(curve["score"])
    ax.set_title("score by distance to the training rows")
    ax.legend()
    fig.tight_layout()
    return png_data_uri(fig)


def _perturb(r: dict) -> str:
    rows = []
    for e in r["table"]:
        for who in ("base", "tuned"):
            x = e[who]
            rows.append(
                [
                    e["perturbation"],
                    e["inputs_changed"],
                    who,
                    _num(x["clean"]),
                    _num(x["perturbed"]),
                    f"{x['drop']:+.2f}",
                    _ci(x["drop_ci"]),
                    f"{100 * x['outputs_changed']:.1f} %",
                ]
            )
        d = e["drop_tuned_minus_base"]
        rows.append(
            [
                e["perturbation"],
                "",
                "tuned − base (per-row score)",
                "",
                "",
                _num(d["difference"]),
                _ci(d["ci"]),
                "",
            ]
        )
    return f"<h3 id='perturb'>Perturbed inputs ({esc(r['metric'])})</h3>" + _table(
        [
            "perturbation",
            "inputs changed",
            "model",
            "clean",
            "perturbed",
            "drop",
            "95% interval",
            "outputs changed",
        ],
        rows,
    )


def _forget(r: dict) -> str:
    parts = [f"<h3 id='forget'>Forgetting</h3><p>general text: {esc(r['general_text'])}</p>"]
    if "kl_mean" in r:
        d = r["nll_per_token_difference"]
        parts.append(
            _table(
                [
                    "passages",
                    "tokens",
                    "perplexity base",
                    "perplexity fine-tuned",
                    "Δ NLL/token [95%]",
                    "mean KL (drift)",
                ],
                [
                    [
                        r["passages"],
                        r["tokens"],
                        _num(r["perplexity_base"]),
                        _num(r["perplexity_tuned"]),
                        f"{d['difference']:+.4f} {_ci(d['ci'])}",
                        f"{r['kl_mean']:.4f}",
                    ]
                ],
            )
        )
    w = r["weights"]
    parts.append(
        f"<p>{w['changed']} of {w['matrices']} weight matrices changed; {w['intruders_total']} intruder directions in {w['matrices_with_intruders']} of {w['matrices_examined']} examined (top {w['k']} singular directions, cosine &lt; {w['epsilon']}).</p>"
    )
    parts.append(
        _table(
            ["module kind", "matrices", "mean |ΔW|/|W|", "intruders"],
            [
                [k, v["matrices"], f"{v['relative_change_mean']:.5f}", v["intruders"]]
                for k, v in w["by_kind"].items()
            ],
        )
    )
    return "".join(parts)


def _faithful(r: dict) -> str:
    rows = [
        [
            e["measure"],
            _num(e["base"], 3),
            _num(e["tuned"], 3),
            _num(e["difference"], 3),
            _ci(e["ci"]),
            _num(e["references"], 3),
        ]
        for e in r["table"]
    ]
    ex = "".join(
        f"<li>row {e['row'] + 1}: {esc(e['output'])} — unsupported {esc(str(e['unsupported']))}</li>"
        for e in r["examples"]
    )
    return (
        "<h3 id='faithful'>Faithfulness proxies</h3>"
        + _table(
            ["measure (mean per row)", "base", "fine-tuned", "Δ", "95% interval", "references"],
            rows,
        )
        + (f"<ul>{ex}</ul>" if ex else "")
    )


def _safety(r: dict) -> str:
    p, c, rep = r["profanity"], r["counterfactual"], r["representation"]
    parts = ["<h3 id='safety'>Safety and bias proxies</h3>"]
    parts.append(
        _table(
            ["measure", "base", "fine-tuned", "Δ", "95% interval", "references"],
            [
                [
                    f"outputs with a listed word ({p['list_size']} listed)",
                    _num(p["base"], 3),
                    _num(p["tuned"], 3),
                    _num(p["difference"], 3),
                    _ci(p["ci"]),
                    _num(p["references"], 3),
                ],
            ],
        )
    )
    if c["rows"]:
        parts.append(
            _table(
                ["gender-swapped inputs", "base", "fine-tuned", "tuned − base [95%]"],
                [
                    [
                        f"outputs changed beyond the swap ({c['rows']} rows)",
                        _num(c["base"]["changed_beyond_swap"]),
                        _num(c["tuned"]["changed_beyond_swap"]),
                        f"{c['changed_tuned_minus_base']['difference']:+.2f} {_ci(c['changed_tuned_minus_base']['ci'])}",
                    ],
                    [
                        "score gap, swapped − original",
                        _num(c["base"]["score_gap"]),
                        _num(c["tuned"]["score_gap"]),
                        f"{c['gap_tuned_minus_base']['difference']:+.2f} {_ci(c['gap_tuned_minus_base']['ci'])}",
                    ],
                ],
            )
        )
    else:
        parts.append(f"<p>{esc(c['note'])}</p>")
    parts.append(
        _table(
            ["gendered terms", "female", "male", "female share"],
            [[k, v["female"], v["male"], _num(v["female_share"])] for k, v in rep.items()],
        )
    )
    return "".join(parts)


RENDER = {
    "slices": _slices,
    "perturb": _perturb,
    "forget": _forget,
    "faithful": _faithful,
    "safety": _safety,
}
