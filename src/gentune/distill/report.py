"""The distillation report: the student's base model, the student(s) and the teacher generate
for the same gold test rows; the task's headline metric with its bootstrap interval per model,
the student's paired differences against each of the others, and the costs (the teacher's
labelling, the students' training, each model's generation speed). OUT/report.md."""

from __future__ import annotations

import time
from pathlib import Path

from gentune.metrics import METRICS, paired_bootstrap, text_metrics


def _local_rows(spec: str, records, template_from: str | None, s) -> tuple[list[dict], float]:
    from gentune.data.tasks import PromptTemplate
    from gentune.inference.evaluate import predict
    from gentune.inference.generate import default_decoding
    from gentune.inference.load import load_for_inference, resolve_template

    loaded = load_for_inference(spec)
    template = loaded.template
    if template is None:  # a plain model (the student's base): the student's own prompt
        template = (
            PromptTemplate.load(Path(template_from, "template.json")) if template_from else None
        )
    template = template or resolve_template(
        loaded,
        s.task,
        instruction=s.instruction,
        source_lang=s.source_lang,
        target_lang=s.target_lang,
    )
    started = time.time()
    rows = predict(loaded, template, records, default_decoding(template), progress=s.progress)
    return rows, time.time() - started


def _http_rows(teacher, records, decoding) -> tuple[list[dict], float]:
    from concurrent.futures import ThreadPoolExecutor

    started = time.time()
    with ThreadPoolExecutor(max_workers=teacher.concurrency) as pool:
        answers = list(pool.map(lambda r: teacher.request(r.input or "", decoding), records))
    rows = [
        {
            "row": r.where,
            "input": r.input,
            "output": texts[0] if texts else "",
            "reference": r.output,
            "stopped": bool(stops and stops[0]),
        }
        for r, (texts, stops) in zip(records, answers, strict=True)
    ]
    return rows, time.time() - started


def side_by_side(s, runs: dict[str, str], result: dict, *, log=print) -> dict:
    """Score every model on s.test; write OUT/report.md; returns the numbers."""
    from gentune.data.records import read_records
    from gentune.data.tasks import get_task
    from gentune.distill.teacher import label_decoding, make_teacher

    records = read_records(s.test, kind="pairs")
    headline = get_task(s.task).metrics[0]
    student = runs["student"]
    models: dict[str, tuple[list[dict], float]] = {}
    log(f"gentune distill: scoring the models on {len(records)} rows of {s.test}")
    models[f"base ({s.student})"] = _local_rows(s.student, records, student, s)
    for name, run in runs.items():
        models[name] = _local_rows(run, records, None, s)
    teacher = make_teacher(s)
    if hasattr(teacher, "request"):
        gold = read_records(s.gold, kind="pairs") if s.gold else None
        decoding = label_decoding(s, teacher, [r.output or "" for r in gold] if gold else None)
        models[f"teacher ({s.teacher})"] = _http_rows(teacher, records, decoding)
    else:
        models[f"teacher ({s.teacher})"] = _local_rows(s.teacher, records, None, s)
    refs = [r.output or "" for r in records]
    table = {}
    for name, (rows, seconds) in models.items():
        outs = [r["output"] for r in rows]
        m = text_metrics(outs, refs)
        boot = paired_bootstrap(headline, outs, outs, refs, samples=1000, seed=0)
        table[name] = {
            headline: m[headline],
            "ci": boot["tuned_ci"],
            "chrf": m["chrf"],
            "stopped_by_eos": 100.0 * sum(bool(r["stopped"]) for r in rows) / len(rows),
            "seconds": round(seconds, 1),
            "rows_per_s": len(rows) / seconds if seconds else None,
        }
    diffs = {}
    ours = [r["output"] for r in models["student"][0]]
    for name, (rows, _) in models.items():
        if name == "student":
            continue
        boot = paired_bootstrap(
            headline, [r["output"] for r in rows], ours, refs, samples=1000, seed=0
        )
        diffs[name] = {
            "difference": boot["difference"],
            "ci": boot["ci"],
            "p_not_better": boot["p_not_better"],
        }
    report = {"headline": headline, "rows": len(records), "models": table, "student_vs": diffs}
    text = render(report, result, s)
    Path(s.out, "report.md").write_text(text)
    log(text)
    return report


def labelling_cost(out: Path, this: dict) -> dict:
    """Rows labelled and wall time over every labelling invocation (OUT/labelling.jsonl)."""
    import json

    log = out / "labelling.jsonl"
    runs = [json.loads(x) for x in log.read_text().splitlines()] if log.exists() else [this]
    total = {k: sum(r[k] for r in runs) for k in ("labelled", "failed", "seconds")}
    return {**total, "invocations": len(runs)}


def render(report: dict, result: dict, s) -> str:
    """The report as Markdown."""
    h = report["headline"]
    unit = "higher" if METRICS[h].higher_is_better else "lower"
    lines = [
        f"# gentune distill: {s.task}, {report['rows']} test rows of {s.test}",
        "",
        f"| model | {h} (95% CI) | chrF | stopped by EOS % | generation s (rows/s) |",
        "|---|---|---|---|---|",
    ]
    for name, m in report["models"].items():
        lines.append(
            f"| {name} | {m[h]:.2f} [{m['ci'][0]:.2f}, {m['ci'][1]:.2f}] | {m['chrf']:.2f} | "
            f"{m['stopped_by_eos']:.0f} | {m['seconds']:.1f} ({m['rows_per_s'] or 0:.2f}) |"
        )
    lines += [
        "",
        f"| student against | {h} difference (95% CI, paired) | p(not better) |",
        "|---|---|---|",
    ]
    for name, d in report["student_vs"].items():
        lines.append(
            f"| {name} | {d['difference']:+.2f} [{d['ci'][0]:+.2f}, {d['ci'][1]:+.2f}] | {d['p_not_better']:.3f} |"
        )
    lab = labelling_cost(Path(s.out), result["labelling"])
    lines += [
        "",
        f"({unit} {h} is better.) Costs: the teacher labelled {lab['labelled']} inputs in "
        f"{lab['seconds']:.0f} s of wall time over {lab['invocations']} invocation(s) "
        f"({lab['failed']} failed); "
        f"{result['kept']} labels kept after the filters ({result['dropped']}); training: "
        + ", ".join(f"{k} {v:.0f} s" for k, v in result["training_seconds"].items())
        + ".",
    ]
    return "\n".join(lines) + "\n"
