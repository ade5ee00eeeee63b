"""The checks beyond the training rows, base against tuned on the same rows: slices,
perturbations, forgetting, faithfulness and safety (`--checks`, in `gentune evaluate --compare`
and `gentune explain`). Each reads the two models, the rows and both models' outputs, and
returns numbers; `run_checks` times them and `evaluate_with_checks` adds them to the
evaluation (OUT/checks.json and a section of OUT/report.html)."""

from __future__ import annotations

import sys
import time
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from gentune.config import ChecksSettings, Decoding
from gentune.data.checks import source_text
from gentune.data.records import Record
from gentune.data.tasks import PromptTemplate
from gentune.inference.evaluate import evaluate_models, predict
from gentune.inference.load import Loaded
from gentune.metrics import bootstrap_mean_diff, paired_bootstrap, row_score
from gentune.rundir import is_run, write_json
from gentune.trust import faithful, forgetting, safety
from gentune.trust.perturb import perturb
from gentune.trust.slices import row_sources, slices, text_metric_names
from gentune.trust.trainrows import training_rows


@dataclass
class Pair:
    """What every check reads: both models, the rows and both models' outputs on them."""

    tuned: Loaded
    base: Loaded
    template: PromptTemplate
    base_template: PromptTemplate
    records: list[Record]
    tuned_rows: list[dict]  # predict()'s rows: output, reference, ...
    base_rows: list[dict]
    decoding: Decoding
    data: str
    train: list[Record] | None
    batch_size: int = 8
    samples: int = 1000
    seed: int = 0
    progress: bool = True

    @property
    def task(self) -> str:
        return self.template.task

    @property
    def references(self) -> list[str]:
        return [r["reference"] for r in self.tuned_rows]

    def regenerate(self, records: list[Record]) -> tuple[list[str], list[str]]:
        """(base outputs, tuned outputs) for other versions of the rows."""
        outs = []
        for loaded, template in ((self.base, self.base_template), (self.tuned, self.template)):
            rows = predict(
                loaded,
                template,
                records,
                self.decoding,
                batch_size=self.batch_size,
                progress=self.progress,
            )
            outs.append([r["output"] for r in rows])
        return outs[0], outs[1]


def with_input(record: Record, text: str) -> Record:
    """The record with its user input replaced (a chat: its last user turn)."""
    if record.messages:
        turns = list(record.messages)
        k = max(i for i, m in enumerate(turns) if m["role"] == "user")
        turns[k] = {**turns[k], "content": text}
        return replace(record, messages=tuple(turns))
    return replace(record, input=text)


def user_input(record: Record) -> str:
    """What the user gave: the input, or a chat's last user turn."""
    if record.messages:
        return next(m["content"] for m in reversed(record.messages) if m["role"] == "user")
    return record.input or ""


def check_slices(p: Pair, s: ChecksSettings) -> dict:
    """Every metric per slice, base against tuned (see `slices`)."""
    sources = row_sources(p.data, p.records)
    return slices(
        p.task,
        p.records,
        p.base_rows,
        p.tuned_rows,
        train=p.train,
        sources=sources,
        samples=p.samples,
        seed=p.seed,
    )


def check_perturb(p: Pair, s: ChecksSettings) -> dict:
    """Per perturbation and model: the headline metric on clean and perturbed inputs, the drop
    (clean − perturbed) with its interval, the share of outputs that changed; and the tuned
    model's drop against the base's (per-row score, with its interval)."""
    metric = text_metric_names(p.task)[0]
    refs, inputs = p.references, [user_input(r) for r in p.records]
    clean = {
        "base": [r["output"] for r in p.base_rows],
        "tuned": [r["output"] for r in p.tuned_rows],
    }
    table = []
    for name in s.perturbations:
        texts = perturb(name, inputs, p.seed)
        outs = dict(
            zip(
                ("base", "tuned"),
                p.regenerate([with_input(r, t) for r, t in zip(p.records, texts, strict=True)]),
                strict=True,
            )
        )
        entry: dict = {
            "perturbation": name,
            "inputs_changed": sum(a != b for a, b in zip(inputs, texts, strict=True)),
        }
        drops = {}
        for who in ("base", "tuned"):
            boot = paired_bootstrap(
                metric, outs[who], clean[who], refs, samples=p.samples, seed=p.seed
            )
            entry[who] = {
                "clean": boot["tuned"],
                "perturbed": boot["base"],
                "drop": boot["difference"],
                "drop_ci": boot["ci"],
                "outputs_changed": float(
                    np.mean([a != b for a, b in zip(outs[who], clean[who], strict=True)])
                ),
            }
            drops[who] = [
                row_score(c, r, p.task) - row_score(o, r, p.task)
                for c, o, r in zip(clean[who], outs[who], refs, strict=True)
            ]
        entry["drop_tuned_minus_base"] = bootstrap_mean_diff(
            drops["base"], drops["tuned"], samples=p.samples, seed=p.seed
        )
        table.append(entry)
    return {"metric": metric, "table": table, "seed": p.seed}


def check_forget(p: Pair, s: ChecksSettings) -> dict:
    """General-text perplexity and drift, and the weights' change (see `forgetting`)."""
    passages, source = forgetting.general_passages(s.general_text, s.general_rows, p.seed)
    result: dict = {"general_text": source}
    if p.base.tokenizer.get_vocab() == p.tuned.tokenizer.get_vocab():
        result.update(
            forgetting.drift(
                p.tuned.model,
                p.base.model,
                p.tuned.tokenizer,
                passages,
                batch_size=p.batch_size,
                samples=p.samples,
                seed=p.seed,
                progress=p.progress,
            )
        )
    else:
        result["note"] = "the two models' vocabularies differ: no general-text drift"
    result["weights"] = forgetting.weight_change(p.tuned.model, p.base.model, progress=p.progress)
    return result


def check_faithful(p: Pair, s: ChecksSettings) -> dict:
    """Faithfulness proxies of summaries against their sources (see `faithful`)."""
    if p.task != "summarization":
        return {"note": f"faithfulness proxies are for summarization; this task is {p.task}"}
    return faithful.faithfulness(
        [source_text(r) for r in p.records],
        [r["output"] for r in p.base_rows],
        [r["output"] for r in p.tuned_rows],
        p.references,
        samples=p.samples,
        seed=p.seed,
    )


def check_safety(p: Pair, s: ChecksSettings) -> dict:
    """Profanity rates, the counterfactual gender probe and gender-term representation."""
    base = [r["output"] for r in p.base_rows]
    tuned = [r["output"] for r in p.tuned_rows]
    refs = [x or "" for x in p.references]
    flag = {
        k: [float(bool(safety.profane(o))) for o in v]
        for k, v in (("base", base), ("tuned", tuned))
    }
    profanity = bootstrap_mean_diff(flag["base"], flag["tuned"], samples=p.samples, seed=p.seed)
    profanity["references"] = (
        float(np.mean([bool(safety.profane(r)) for r in refs])) if refs else None
    )
    profanity["words_tuned"] = dict(
        Counter(w for o in tuned for w in safety.profane(o)).most_common(10)
    )
    profanity["list_size"] = len(safety.profanity_words())
    return {
        "profanity": profanity,
        "counterfactual": _counterfactual(p),
        "representation": {
            "base": safety.representation(base),
            "tuned": safety.representation(tuned),
            "references": safety.representation(refs),
        },
    }


def _counterfactual(p: Pair) -> dict:
    idx = [i for i, r in enumerate(p.records) if safety.has_gender(user_input(r))]
    if not idx:
        return {"rows": 0, "note": "no input has a gendered term or listed name"}
    recs = [with_input(p.records[i], safety.swap_gender(user_input(p.records[i]))) for i in idx]
    swapped = dict(zip(("base", "tuned"), p.regenerate(recs), strict=True))
    clean = {"base": p.base_rows, "tuned": p.tuned_rows}
    result: dict = {"rows": len(idx)}
    changed, gaps = {}, {}
    for who in ("base", "tuned"):
        orig = [clean[who][i]["output"] for i in idx]
        refs = [p.references[i] or "" for i in idx]
        changed[who] = [
            float(_norm(safety.swap_gender(o)) != _norm(x))
            for o, x in zip(orig, swapped[who], strict=True)
        ]
        gaps[who] = [
            row_score(x, safety.swap_gender(r), p.task) - row_score(o, r, p.task)
            for o, x, r in zip(orig, swapped[who], refs, strict=True)
        ]
        result[who] = {
            "changed_beyond_swap": float(np.mean(changed[who])),
            "score_gap": float(np.mean(gaps[who])),
        }
    opts = {"samples": p.samples, "seed": p.seed}
    result["changed_tuned_minus_base"] = bootstrap_mean_diff(
        changed["base"], changed["tuned"], **opts
    )
    result["gap_tuned_minus_base"] = bootstrap_mean_diff(gaps["base"], gaps["tuned"], **opts)
    return result


def _norm(text: str) -> str:
    return " ".join(text.split())


RUNNERS = {
    "slices": check_slices,
    "perturb": check_perturb,
    "forget": check_forget,
    "faithful": check_faithful,
    "safety": check_safety,
}


def run_checks(p: Pair, s: ChecksSettings, log=print) -> dict:
    """Every selected check, timed; one line each to `log`."""
    from gentune.trust.page_checks import summary_line

    result: dict = {"checks": s.selected, "seconds": {}, "rows": len(p.records)}
    for name in s.selected:
        started = time.time()
        log(f"gentune: check {name} ...")
        result[name] = RUNNERS[name](p, s)
        result["seconds"][name] = round(time.time() - started, 1)
        log(
            f"gentune: check {name} ({result['seconds'][name]} s): {summary_line(name, result[name])}"
        )
    return result


def evaluate_with_checks(
    spec: str,
    data: str,
    out: str | Path,
    *,
    compare: str,
    checks: ChecksSettings,
    train: str | None = None,
    log=None,
    **kwargs,
) -> dict:
    """`evaluate --compare` and the checks: OUT/checks.json and the checks in the report."""
    log = log or (lambda line: print(line, file=sys.stderr))
    ev = evaluate_models(spec, data, out, compare=compare, keep=True, **kwargs)
    assert ev.loaded is not None and ev.base is not None
    if not ev.rows:  # free text: nothing generated to check
        log("gentune: note: the checks compare generated outputs; free-text rows have none")
        ev.report(spec, out)
        return ev.result
    pair = Pair(
        ev.loaded,
        ev.base,
        ev.template,
        ev.base_template,
        ev.records,
        ev.rows,
        ev.base_rows,
        ev.decoding,
        str(data),
        training_rows(spec if is_run(spec) else None, train, ev.loaded, ev.template, log),
        batch_size=kwargs.get("batch_size", 8),
        samples=kwargs.get("bootstrap", 1000),
        seed=kwargs.get("seed", 0),
        progress=kwargs.get("progress", True),
    )
    result = run_checks(pair, checks, log)
    write_json(Path(out) / "checks.json", result)
    from gentune.trust.page_checks import render_checks

    ev.report(spec, out, sections=(render_checks(result),))
    ev.result["checks"] = result
    return ev.result
