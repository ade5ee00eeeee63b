"""The checks beyond the training rows on the demo's run: `gentune evaluate --compare` with
every check and every perturbation, then the tables of OUT/checks.json as Markdown.

    python bench/checks_demo.py [--run runs/demo/run] [--out runs/demo/checks] [--skip-run]

Run `./dev demo` first. Prints the tables and writes them to bench/results/checks-demo.md."""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path


def run(args) -> float:
    cmd = [
        sys.executable, "-m", "gentune.cli", "evaluate", args.run, "--data", args.data,
        "--out", args.out, "--compare", "smollm2-135m", "--no-progress",
        "--checks", "slices,perturb,forget,faithful,safety",
        "--perturb", "typos,case,spaces,mild-mix",
    ]  # fmt: skip
    started = time.time()
    subprocess.run(cmd, check=True)
    return time.time() - started


def ci(x) -> str:
    return f"[{x[0]:+.2f}, {x[1]:+.2f}]" if x else "–"


def tables(c: dict) -> list[str]:
    lines = ["## Slices (ROUGE-L, base against fine-tuned)", ""]
    lines += [
        "| family | slice | rows | base | fine-tuned | Δ [95% CI] |",
        "|---|---|---|---|---|---|",
    ]
    for e in c["slices"]["table"]:
        if e["metric"] == "rougeL":
            lines.append(f"| {e['family']} | {e['slice']} | {e['rows']} | {e['base']:.2f} | "
                         f"{e['tuned']:.2f} | {e['difference']:+.2f} {ci(e['ci'])} |")  # fmt: skip
    cv = c["slices"]["curve"]
    lines += ["", f"Fall-off ({cv['score']}, nearest fifth minus farthest fifth by similarity): "
              f"fine-tuned {cv['falloff_tuned']:+.2f}, base {cv['falloff_base']:+.2f}; mean "
              f"similarity {c['slices']['similarity_mean']:.3f}.", ""]  # fmt: skip
    p = c["perturb"]
    lines += [f"## Perturbed inputs ({p['metric']})", "",
              "| perturbation | model | clean | perturbed | drop [95% CI] | outputs changed |",
              "|---|---|---|---|---|---|"]  # fmt: skip
    for e in p["table"]:
        for who in ("base", "tuned"):
            x = e[who]
            lines.append(f"| {e['perturbation']} | {who} | {x['clean']:.2f} | {x['perturbed']:.2f} | "
                         f"{x['drop']:+.2f} {ci(x['drop_ci'])} | {100 * x['outputs_changed']:.0f} % |")  # fmt: skip
        d = e["drop_tuned_minus_base"]
        lines.append(f"| {e['perturbation']} | tuned − base (row ROUGE-L) | | | "
                     f"{d['difference']:+.2f} {ci(d['ci'])} | |")  # fmt: skip
    f = c["forget"]
    w, d = f["weights"], f["nll_per_token_difference"]
    lines += ["", "## Forgetting", "",
              f"General text: {f['general_text']}, {f['passages']} passages, {f['tokens']} tokens. "
              f"Perplexity base {f['perplexity_base']:.2f}, fine-tuned {f['perplexity_tuned']:.2f} "
              f"(Δ NLL/token {d['difference']:+.4f} {ci(d['ci'])}); mean KL drift {f['kl_mean']:.4f} "
              f"nats. Weights: {w['changed']} of {w['matrices']} matrices changed, mean ‖ΔW‖/‖W‖ "
              f"{w['relative_change_mean']:.4f}; {w['intruders_total']} intruder directions in "
              f"{w['matrices_examined']} matrices examined (top {w['k']}, cosine < {w['epsilon']}).", ""]  # fmt: skip
    lines += ["## Faithfulness (mean per row)", "",
              "| measure | base | fine-tuned | Δ [95% CI] | references |", "|---|---|---|---|---|"]  # fmt: skip
    for e in c["faithful"]["table"]:
        lines.append(f"| {e['measure']} | {e['base']:.3f} | {e['tuned']:.3f} | "
                     f"{e['difference']:+.3f} {ci(e['ci'])} | {e['references']:.3f} |")  # fmt: skip
    s = c["safety"]
    pr, cf = s["profanity"], s["counterfactual"]
    lines += ["", "## Safety", "",
              f"Outputs with a word of better-profanity's list ({pr['list_size']} entries): base "
              f"{pr['base']:.3f}, fine-tuned {pr['tuned']:.3f} (Δ {pr['difference']:+.3f} "
              f"{ci(pr['ci'])}), references {pr['references']:.3f}."]  # fmt: skip
    if cf["rows"]:
        lines.append(f"Gender-swapped inputs ({cf['rows']} rows): outputs changed beyond the swap, "
                     f"base {cf['base']['changed_beyond_swap']:.2f}, fine-tuned "
                     f"{cf['tuned']['changed_beyond_swap']:.2f}; score gap swapped − original, base "
                     f"{cf['base']['score_gap']:+.2f}, fine-tuned {cf['tuned']['score_gap']:+.2f}.")  # fmt: skip
    rep = s["representation"]
    lines.append("Gendered terms (female / male): " + "; ".join(
        f"{k} {v['female']} / {v['male']}" for k, v in rep.items()) + ".")  # fmt: skip
    lines += ["", "Seconds per check: " + ", ".join(f"{k} {v}" for k, v in c["seconds"].items())]
    return lines


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", default="runs/demo/run")
    ap.add_argument("--data", default="runs/demo/data/aclsum-val.jsonl")
    ap.add_argument("--out", default="runs/demo/checks")
    ap.add_argument("--skip-run", action="store_true", help="format an earlier OUT/checks.json")
    args = ap.parse_args()
    head = [
        f"# Checks beyond the training rows on the demo's run ({time.strftime('%Y-%m-%d')})",
        "",
    ]
    if not args.skip_run:
        head.append(f"`gentune evaluate {args.run} --data {args.data} --out {args.out} --compare "
                    "smollm2-135m --perturb typos,case,spaces,mild-mix`: "
                    f"{run(args):.0f} s in all, evaluation of both models included.")  # fmt: skip
        head.append("")
    c = json.loads((Path(args.out) / "checks.json").read_text())
    text = "\n".join(head + tables(c)) + "\n"
    print(text)
    Path("bench/results/checks-demo.md").write_text(text)


if __name__ == "__main__":
    main()
