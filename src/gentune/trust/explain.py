"""`gentune explain`: the fine-tuned model against its base on the same tokens, and what it
memorised of its training rows; writes OUT/explain.json, OUT/explain.html and the plot."""

from __future__ import annotations

import random
import resource
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from gentune.config import ChecksSettings, ExplainSettings
from gentune.data.checks import leakage, whole_text
from gentune.data.encode import encode_dataset
from gentune.data.records import Record, read_records
from gentune.data.tasks import get_task
from gentune.errors import UsageError
from gentune.inference.evaluate import predict, reference_length
from gentune.inference.generate import default_decoding, encode_prompts, generate
from gentune.inference.load import Loaded, load_for_inference
from gentune.models.families import is_seq2seq
from gentune.rundir import is_run, write_json
from gentune.tokenizer import source_pad_id
from gentune.trust import memorisation as mem
from gentune.trust.attribution import attribution
from gentune.trust.checks import Pair, run_checks
from gentune.trust.compare import RowTokens, compare_rows, output_example
from gentune.trust.trainrows import training_rows

POSITIONS = 32  # output positions the shift rate is shown for
LISTED = 10  # tokens listed as most gained / lost, rows as most shifted


def explain(s: ExplainSettings, *, checks: ChecksSettings | None = None, log=print) -> dict:
    """Explain run `s.run` on the rows of `s.data` (see the module) and run `checks` (none
    unless given); returns explain.json's numbers."""
    started = time.time()
    tuned, base, base_name = _models(s, log)
    template = tuned.template
    assert template is not None  # a run always has its template
    held = _rows(s.data, template, s.limit, "--data")
    log(f"gentune: explaining {len(held)} rows of {s.data}: {s.run} against {base_name}")
    side = _side(tuned, base, held, s, log, outputs=True)
    result: dict = {
        "run": s.run,
        "base": base_name,
        "data": s.data,
        "rows": len(held),
        "precision": s.precision,
        "prompts_shortened": side["shortened"],
        "tokens": aggregate(side["output_tokens"], tuned.tokenizer),
        "reference": _reference_summary(side),
    }
    train = training_rows(s.run, s.train, tuned, template, log)
    if train is None:
        result["memorisation"] = None
    else:
        result["memorisation"] = _memorisation(s, tuned, base, held, side, train, log)
    if s.attribution:
        result["attribution"] = _attribution(tuned, base, side, log)
    if checks is not None and checks.selected:
        result["checks"] = _checks(s, checks, tuned, base, held, side, train, log)
    result["rows_detail"] = _rows_detail(held, side, tuned.tokenizer, result.get("attribution"))
    result["seconds"] = round(time.time() - started, 1)
    result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    _write(s, result, tuned.tokenizer, log)
    return result


def _models(s: ExplainSettings, log) -> tuple[Loaded, Loaded, str]:
    """The run and its base (the run's own base model unless --base), in s.precision."""
    if not is_run(s.run):
        raise UsageError(
            f"{s.run}: not a gentune run; explain compares a run (gentune train's --out) with "
            "its base model"
        )
    tuned = load_for_inference(s.run, precision=s.precision)
    manifest = tuned.manifest or {}
    base_name = s.base or manifest["base_model"]
    log(f"gentune: loading the base model {base_name}")
    base = load_for_inference(base_name, precision=s.precision)
    if base.tokenizer.get_vocab() != tuned.tokenizer.get_vocab():
        raise UsageError(
            f"--base {base_name}: its vocabulary differs from the run's; per-token comparison "
            "needs the same tokenizer (give the run's own base model)"
        )
    return tuned, base, base_name


def _rows(path: str, template, limit: int | None, flag: str) -> list[Record]:
    kind = get_task(template.task).kind
    if kind != "pairs" and kind != "chat":
        raise UsageError(f"{flag} {path}: explain needs prompts (a pairs or dialogue task)")
    records = read_records(path, kind=kind, require_output=False)
    return records[:limit] if limit else records


def _side(tuned: Loaded, base: Loaded, records: list[Record], s, log, *, outputs: bool) -> dict:
    """Greedy outputs of the tuned model, and both models teacher-forced over them (outputs)
    and over the references (where rows have them)."""
    template, tok, model = tuned.template, tuned.tokenizer, tuned.model
    assert template is not None
    decoding = default_decoding(template, do_sample=False)
    encoded = encode_prompts(records, template, tok, model, decoding.max_new_tokens)
    prompts = [ids for ids, _, _ in encoded]
    with _bar(s, len(prompts), "generate") as bar:
        gens = generate(model, tok, prompts, decoding, batch_size=s.batch_size, progress=bar.update)
    side: dict = {
        "prompts": prompts,
        "outputs": [g.text for g in gens],
        "stopped": [g.finished for g in gens],
        "shortened": sum(short for _, _, short in encoded),
        "output_tokens": None,
    }
    pad, seq2seq = source_pad_id(tok), is_seq2seq(model)
    if outputs:
        examples = [
            output_example(p, g.tokens, r.where, seq2seq)
            for p, g, r in zip(prompts, gens, records, strict=True)
        ]
        side["output_examples"] = examples
        with _bar(s, len(examples), "both models over the outputs") as bar:
            side["output_tokens"] = compare_rows(
                model, base.model, examples, pad, batch_size=s.batch_size, progress=bar.update
            )
    side.update(_references(tuned, base, records, s))
    return side


def _bar(s: ExplainSettings, total: int, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not s.progress, dynamic_ncols=True)


def _references(tuned: Loaded, base: Loaded, records: list[Record], s) -> dict:
    """Both models teacher-forced over the references, encoded as training encoded them (a
    target that cannot fit is left out, named)."""
    template = tuned.template
    assert template is not None
    with_ref = [r for r in records if template.reference(r)]
    if not with_ref:
        return {"reference_tokens": None, "references": [None] * len(records), "left_out": []}
    max_length = reference_length(template, tuned.model)
    examples, report = encode_dataset(
        with_ref, template, tuned.tokenizer, max_length=max_length, skip_long_targets=True
    )
    with _bar(s, len(examples), "both models over the references") as bar:
        rows = compare_rows(
            tuned.model,
            base.model,
            list(examples),
            source_pad_id(tuned.tokenizer),
            batch_size=s.batch_size,
            progress=bar.update,
        )
    by_where = {r.where: r for r in rows}
    return {
        "reference_tokens": [by_where.get(r.where) for r in records],
        "references": [template.reference(r) for r in records],
        "left_out": list(report.too_long),
    }


def _checks(s, checks: ChecksSettings, tuned, base, held, side, train, log) -> dict | None:
    """The checks beyond the training rows on the explained rows: the base's outputs are
    generated as the run's were (greedy, the run's prompt)."""
    if not all(side["references"]):
        log("gentune explain: note: the checks need a reference on every row: skipped")
        return None
    template = tuned.template
    decoding = default_decoding(template, do_sample=False)
    tuned_rows = [
        {"output": o, "reference": r}
        for o, r in zip(side["outputs"], side["references"], strict=True)
    ]
    base_rows = predict(
        base, template, held, decoding, batch_size=s.batch_size, progress=s.progress
    )
    pair = Pair(
        tuned,
        base,
        template,
        template,
        held,
        tuned_rows,
        base_rows,
        decoding,
        s.data,
        train,
        batch_size=s.batch_size,
        samples=s.bootstrap,
        seed=s.seed,
        progress=s.progress,
    )
    return run_checks(pair, checks, log)


def _reference_summary(side: dict) -> dict | None:
    rows = [r for r in side["reference_tokens"] or [] if r is not None]
    if not rows:
        print(
            "gentune explain: note: no row has a reference: the reference-side numbers "
            "(Δ log-prob of the targets, memorisation) are skipped",
            file=sys.stderr,
        )
        return None
    delta = np.concatenate([r.delta for r in rows])
    return {
        "rows": len(rows),
        "tokens": int(delta.size),
        "delta_logprob_mean": float(delta.mean()),
        "logp_tuned_mean": float(np.mean([r.logp_tuned.sum() for r in rows])),
        "logp_base_mean": float(np.mean([r.logp_base.sum() for r in rows])),
        "left_out": side["left_out"],
    }


def aggregate(rows: list[RowTokens], tokenizer) -> dict:
    """% unshifted / marginal / shifted positions overall and by output position, mean KL and
    entropies, the tokens most gained (the tuned model's, by Σ Δ log-prob) and most lost (the
    base's first choice where the tuned model wrote another, by Σ Δ log-prob of that choice),
    and the rows with the most shifted positions."""
    ranks = np.concatenate([r.base_rank for r in rows]) if rows else np.zeros(0)
    n = max(len(ranks), 1)
    by_pos = []
    for k in range(POSITIONS):
        at = [int(r.base_rank[k]) for r in rows if len(r.base_rank) > k]
        if at:
            by_pos.append(
                {"position": k, "rows": len(at), "shifted": float(np.mean(np.array(at) > 3))}
            )
    gained, lost = _token_table(rows, tokenizer)
    most = sorted(rows, key=lambda r: -int((r.base_rank > 3).sum()))[:LISTED]
    return {
        "positions": int(len(ranks)),
        "unshifted": float((ranks == 1).sum() / n),
        "marginal": float(((ranks >= 2) & (ranks <= 3)).sum() / n),
        "shifted": float((ranks > 3).sum() / n),
        "by_position": by_pos,
        "kl_mean": _mean(rows, "kl"),
        "entropy_tuned_mean": _mean(rows, "entropy_tuned"),
        "entropy_base_mean": _mean(rows, "entropy_base"),
        "delta_logprob_mean": _mean(rows, "delta"),
        "gained": gained,
        "lost": lost,
        "most_shifted_rows": [
            {"row": r.where, "shifted": int((r.base_rank > 3).sum()), "tokens": len(r.base_rank)}
            for r in most
            if (r.base_rank > 3).any()
        ],
    }


def _mean(rows: list[RowTokens], attr: str) -> float:
    """The mean of a per-token number over every row's tokens (0 without tokens)."""
    values = np.concatenate([getattr(r, attr) for r in rows]) if rows else np.zeros(0)
    return float(values.mean()) if values.size else 0.0


def _token_table(rows: list[RowTokens], tokenizer) -> tuple[list[dict], list[dict]]:
    gain: dict[int, list[float]] = defaultdict(list)
    loss: dict[int, list[float]] = defaultdict(list)
    for r in rows:
        for k, tok in enumerate(r.tokens.tolist()):
            gain[tok].append(float(r.delta[k]))
            first = r.top_base[k][0][0] if r.top_base else tok
            if first != tok:  # the base's choice, which the tuned model did not write
                p_base = r.top_base[k][0][1]
                p_tuned = dict(r.top_tuned[k]).get(first)
                if p_tuned is not None:
                    loss[first].append(float(np.log(p_tuned) - np.log(p_base)))
                else:  # below the tuned model's top 5: at most its 5th probability
                    loss[first].append(float(np.log(r.top_tuned[k][-1][1]) - np.log(p_base)))

    def table(d: dict[int, list[float]], sign: int) -> list[dict]:
        items = sorted(d.items(), key=lambda kv: sign * -sum(kv[1]))[:LISTED]
        return [
            {
                "token": tokenizer.decode([tok]),
                "id": tok,
                "count": len(v),
                "delta_sum": round(sum(v), 3),
                "delta_mean": round(sum(v) / len(v), 3),
            }
            for tok, v in items
            if sign * sum(v) > 0
        ]

    return table(gain, 1), table(loss, -1)


def _memorisation(s, tuned, base, held, held_side, train, log) -> dict | None:
    """Memorisation and leakage of the training rows (see memorisation's docstring)."""
    refs = held_side["references"]
    if not any(refs):
        return None
    sample = random.Random(s.seed).sample(train, min(s.limit, len(train)))
    log(f"gentune: memorisation: {len(sample)} of the {len(train)} training rows")
    tside = _side(tuned, base, sample, s, log, outputs=False)
    pairs_held = [(o, r) for o, r in zip(held_side["outputs"], refs, strict=True) if r]
    pairs_train = [(o, r) for o, r in zip(tside["outputs"], tside["references"], strict=True) if r]
    out_h, ref_h = zip(*pairs_held, strict=True)
    out_t, ref_t = zip(*pairs_train, strict=True)
    scored_t = [r for r in tside["reference_tokens"] if r is not None]
    scored_h = [r for r in held_side["reference_tokens"] if r is not None]

    def score(rows):  # log p_tuned(target) − log p_base(target) per row
        return np.array([r.logp_tuned.sum() - r.logp_base.sum() for r in rows])

    exact_leaks, near_leaks = leakage(train, held, "held-out")
    opts = {"samples": s.bootstrap, "seed": s.seed}
    where_h = [r.where for r in held]
    train_text = "\n".join(whole_text(r) for r in train)
    return {
        "train_rows": len(train),
        "sampled": len(sample),
        "heldout_in_training": exact_leaks.count + near_leaks.count,
        "exact_match": mem.gap(
            mem.exact_match(out_t, ref_t), mem.exact_match(out_h, ref_h), **opts
        ),
        "rougeL": mem.gap(mem.rouge_l(out_t, ref_t), mem.rouge_l(out_h, ref_h), **opts),
        "extraction": mem.extraction(
            np.array([r.logp_tuned.sum() for r in scored_t]), [r.where for r in scored_t]
        ),
        "membership": mem.membership(score(scored_t), score(scored_h), **opts),
        "reproduced": mem.reproduced(held_side["outputs"], where_h, train),
        "secrets": mem.secrets(
            held_side["outputs"] + tside["outputs"], where_h + [r.where for r in sample], train_text
        ),
    }


def _attribution(tuned: Loaded, base: Loaded, side: dict, log) -> dict:
    """Gradient × input of the tuned model's outputs over their sources, both models, and
    how much of it lies on source words the output copies (mean share per row)."""
    started = time.time()
    pad = source_pad_id(tuned.tokenizer)
    examples = side["output_examples"]
    result: dict = {
        "tuned": [a.tolist() for a in attribution(tuned.model, examples, pad)],
        "base": [a.tolist() for a in attribution(base.model, examples, pad)],
    }
    result["seconds"] = round(time.time() - started, 1)
    copied = [
        _copied(tuned.tokenizer, side["prompts"][i], side["outputs"][i])
        for i in range(len(examples))
    ]
    for who in ("tuned", "base"):
        shares = [float(np.sum(np.array(a)[c])) for a, c in zip(result[who], copied, strict=True)]
        result[f"copied_share_{who}"] = float(np.mean(shares)) if shares else 0.0
    log(
        f"gentune: attribution: {len(examples)} rows x 2 models in {result['seconds']} s; on "
        f"words the output copies: tuned {100 * result['copied_share_tuned']:.1f} %, base "
        f"{100 * result['copied_share_base']:.1f} %"
    )
    return result


def _copied(tokenizer, source: list[int], output: str) -> np.ndarray:
    """Per source token: whether it is (part of) a word of three letters or more that the
    output contains too."""
    words = {w.lower() for w in output.split() if len(w.strip(".,:;!?()")) >= 3}
    words = {w.strip(".,:;!?()") for w in words}
    pieces = [tokenizer.decode([t]).strip().lower() for t in source]
    return np.array([len(p) >= 3 and any(p in w for w in words) for p in pieces], dtype=bool)


def _rows_detail(held, side, tokenizer, attributions) -> list[dict]:
    """Per row, what the page shows: the input's tokens (with their attribution), the output's
    tokens with their numbers, the reference."""
    detail = []
    for i, rec in enumerate(held):
        row: RowTokens = side["output_tokens"][i]
        ex = side["output_examples"][i]
        n_src = len(ex.input_ids) if ex.seq2seq else len(side["prompts"][i])
        item = {
            "row": rec.where,
            "input": [tokenizer.decode([t]) for t in ex.input_ids[:n_src]],
            "output": side["outputs"][i],
            "reference": side["references"][i],
            "stopped": side["stopped"][i],
            "tokens": [
                {
                    "text": tokenizer.decode([int(t)]),
                    "rank": int(row.base_rank[k]),
                    "delta": round(float(row.delta[k]), 4),
                    "kl": round(float(row.kl[k]), 4),
                    "p_tuned": round(float(np.exp(row.logp_tuned[k])), 4),
                    "p_base": round(float(np.exp(row.logp_base[k])), 4),
                    "top_tuned": [[tokenizer.decode([a]), p] for a, p in row.top_tuned[k]],
                    "top_base": [[tokenizer.decode([a]), p] for a, p in row.top_base[k]],
                }
                for k, t in enumerate(row.tokens.tolist())
            ],
        }
        if attributions:
            item["attribution"] = {k: attributions[k][i] for k in ("tuned", "base")}
        detail.append(item)
    return detail


def _write(s: ExplainSettings, result: dict, tokenizer, log) -> None:
    from gentune.trust.page import render, shift_plot

    out = Path(s.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "explain.json", result)
    plot = shift_plot(result["tokens"]["by_position"], out / "shift_by_position.png")
    (out / "explain.html").write_text(render(result, plot_name=plot.name if plot else None))
    _link_from_run(Path(s.run), out / "explain.html")
    t = result["tokens"]
    log(
        f"gentune: {t['positions']} output positions: {100 * t['shifted']:.1f} % shifted, "
        f"{100 * t['marginal']:.1f} % marginal; mean KL {t['kl_mean']:.3f} nats"
    )
    log(
        f"gentune: written {out / 'explain.html'} and explain.json ({result['seconds']} s, "
        f"peak RSS {result['peak_rss_mb']} MiB)"
    )


def _link_from_run(run: Path, page: Path) -> None:
    """Record the page in RUN/explanations.json, which the run's report links to."""
    import json

    try:
        listed = json.loads((run / "explanations.json").read_text())
    except (OSError, ValueError):
        listed = []
    path = str(page.resolve())
    if path not in listed:
        write_json(run / "explanations.json", [*listed, path])
