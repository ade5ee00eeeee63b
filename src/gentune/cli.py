"""The command line: flags → config objects → library calls. No logic of its own."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from gentune.errors import GentuneError, UsageError


def _add_fields(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input-field", default="input", help="column holding the input")
    p.add_argument("--output-field", default="output", help="column holding the target")
    p.add_argument("--messages-field", default="messages", help="column holding chat messages")
    p.add_argument("--text-field", default="text", help="column holding free text")


def _add_template(p: argparse.ArgumentParser) -> None:
    p.add_argument("--instruction", help="replace the task's default instruction")
    p.add_argument("--system", help="system message (chat templates)")
    p.add_argument("--source-lang", help="translation: source language, e.g. German")
    p.add_argument("--target-lang", help="translation: target language, e.g. English")


def _positive(kind):
    """An argparse type: a number > 0 (a bad value is argparse's usage error, exit 2)."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"{text} must be > 0")
        return value

    parse.__name__ = f"positive {kind.__name__}"
    return parse


def _count(text: str) -> int:
    """An argparse type: a whole number >= 0."""
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r}: give a whole number >= 0")
    return int(text)


def _port(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r}: a port is a number from 1 to 65535")
    return int(text)


def _writing(out: str | None):
    """The lock of an output directory for as long as a command writes it (none without)."""
    from contextlib import nullcontext

    from gentune.lock import locked

    return locked(out) if out else nullcontext()


def _out_dir(path: str) -> Path:
    """An output directory: may exist, must not be a file."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out}: is a file; give a directory")
    return out


def add_settings(
    p, cls, *, only=None, skip=(), names=None, help_default=None, keep_defaults=False, extra=None
) -> None:
    """One flag per field of a settings dataclass (TrainConfig, Decoding, ServeSettings), its
    help the field's own comment. Flags default to None (or are absent): only what the user
    gave overrides the recipe or the task's defaults, and the dataclass validates it.

    names: flag names for fields (`do_sample` is `--sample`); help_default: what the default
    says instead of the field's value; extra: more add_argument keywords per field."""
    import typing
    from dataclasses import MISSING, fields

    from gentune.config import coerce, field_docs

    docs, hints = field_docs(cls), typing.get_type_hints(cls)
    for f in fields(cls):
        if f.name in skip or (only and f.name not in only):
            continue
        flag = "--" + (names or {}).get(f.name, f.name).replace("_", "-")
        shown = (help_default or {}).get(f.name, None if f.default is MISSING else f.default)
        text = docs.get(f.name, "") + (f" (default: {shown})" if shown is not None else "")
        kwargs = {
            "dest": f.name,
            "help": text.replace("%", "%%"),  # argparse formats help
            **({} if keep_defaults else {"default": None}),
            **(extra or {}).get(f.name, {}),
        }
        hint = hints[f.name]
        if hint is bool:
            p.add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
        elif typing.get_origin(hint) is tuple:
            p.add_argument(flag, action="append", metavar="TEXT", **kwargs)
        else:
            kwargs.setdefault("metavar", f.name.upper())
            p.add_argument(flag, type=lambda text, h=hint: coerce(h, text), **kwargs)


def _add_checks(p: argparse.ArgumentParser) -> None:
    """The checks beyond the training rows (`evaluate --compare`, `explain`)."""
    from gentune.config import ChecksSettings

    add_settings(p.add_argument_group("checks beyond the training rows"), ChecksSettings)


def _add_decoding(p: argparse.ArgumentParser) -> None:
    from gentune.config import Decoding

    g = p.add_argument_group("decoding (defaults: the task's)")
    add_settings(
        g,
        Decoding,
        names={"do_sample": "sample"},
        help_default={"max_new_tokens": "the task's", "do_sample": "the task's", "stop": "none"},
    )
    g.add_argument(
        "--greedy",
        action="store_false",
        dest="do_sample",
        default=None,
        help="greedy (or beam) decoding, also for tasks that sample by default "
        "(same as --no-sample)",
    )
    g.add_argument("--batch-size", type=_positive(int), default=8, help="prompts per batch")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")


def _add_precision(p) -> None:
    p.add_argument(
        "--precision",
        choices=("fp32", "bf16", "auto"),
        default="fp32",
        help="weights for generation: fp32 (default), bf16 (about 1.5x faster decoding on a CPU "
        "with native bf16, but greedy outputs can differ from fp32's: bench/generate_speed.py), "
        "auto (bf16 where the hardware has it)",
    )
    p.add_argument(
        "--quantize",
        choices=("int8",),
        default=None,
        help="int8: the linear layers' weights in int8 (torchao weight-only): a quarter of "
        "fp32's memory; slower than fp32 on a CPU without compiled kernels "
        "(bench/generate_speed.py)",
    )


def _given(a, cls) -> dict:
    """The flags of `cls`'s fields the user gave."""
    from dataclasses import fields

    out = {f.name: getattr(a, f.name) for f in fields(cls) if getattr(a, f.name, None) is not None}
    return {k: tuple(v) if isinstance(v, list) else v for k, v in out.items()}


def _decoding_overrides(a) -> dict:
    from gentune.config import Decoding

    return _given(a, Decoding)


def _fields(a):
    from gentune.data.records import Fields

    return Fields(
        input=a.input_field, output=a.output_field, messages=a.messages_field, text=a.text_field
    )


def _template_args(a) -> dict:
    return {
        "instruction": a.instruction,
        "system": a.system,
        "source_lang": a.source_lang,
        "target_lang": a.target_lang,
    }


def _train_config(a):
    from gentune.config import TrainConfig

    return TrainConfig.from_sources(
        getattr(a, "config", None), _given(a, TrainConfig), getattr(a, "overrides", ())
    )


def cmd_train(a) -> None:
    """gentune train."""
    from gentune.training.train import train

    train(_train_config(a))


def cmd_plan(a) -> None:
    """gentune plan."""
    from gentune.training.plan import plan

    if getattr(a, "space", None):
        from gentune.runs.sweep import plan_sweep

        print(plan_sweep(_train_config(a), a.space, a.trials, a.workers))
        return
    print(
        plan(
            _train_config(a),
            tests=getattr(a, "test", None) or (),
            fail_on_leak=getattr(a, "fail_on_leak", False),
        )
    )


def cmd_generate(a) -> None:
    """gentune generate: one prompt (streamed) or a file of inputs."""

    if (a.prompt is None) == (a.data is None):
        raise UsageError("give either a prompt or --data FILE (not both)")
    if a.data and not a.out:
        raise UsageError("--data needs --out DIR for predictions.jsonl")
    if a.out:
        _out_dir(a.out)
    with _writing(a.out):
        _generate(a)


def _generate(a) -> None:
    from gentune.inference.evaluate import generate_outputs

    generate_outputs(
        a.model,
        prompt=a.prompt,
        data=a.data,
        out=a.out,
        task=a.task,
        fields=_fields(a),
        decoding_overrides=_decoding_overrides(a),
        batch_size=a.batch_size,
        stream=not a.no_stream,
        progress=not a.no_progress,
        precision=a.precision,
        quantize=a.quantize,
        **_template_args(a),
    )


def cmd_chat(a) -> None:
    """gentune chat."""
    from gentune.inference.chat import chat

    chat(
        a.model,
        decoding_overrides=_decoding_overrides(a),
        system=a.system,
        precision=a.precision,
        quantize=a.quantize,
    )


def cmd_export(a) -> None:
    """gentune export."""
    from gentune.inference.export import export

    out, auto_class = export(a.run, a.out)
    print(
        f"gentune: exported {a.run} to {out} (load it with {auto_class}.from_pretrained('{out}'))"
    )


def cmd_evaluate(a) -> None:
    """gentune evaluate (with --compare: the report and the checks)."""
    from gentune.config import ChecksSettings
    from gentune.inference.evaluate import evaluate
    from gentune.trust.checks import evaluate_with_checks

    _out_dir(a.out)
    checks = ChecksSettings(**_given(a, ChecksSettings))
    kwargs = dict(
        task=a.task,
        fields=_fields(a),
        limit=a.limit,
        batch_size=a.batch_size,
        progress=not a.no_progress,
        compare=a.compare,
        bootstrap=a.bootstrap,
        seed=a.seed or 0,
        decoding_overrides=_decoding_overrides(a),
        precision=a.precision,
        quantize=a.quantize,
        **_template_args(a),
    )
    if checks.selected and a.checks and not a.compare:
        print("gentune: note: --checks compare two models: give --compare BASE", file=sys.stderr)
    with _writing(a.out):  # one writer per output directory
        if a.compare and checks.selected:
            result = evaluate_with_checks(
                a.model, a.data, a.out, checks=checks, train=a.train, **kwargs
            )
        else:
            result = evaluate(a.model, a.data, a.out, **kwargs)
    if "comparison" in result:
        for m in result["comparison"]["metrics"]:
            ci = m.get("ci")
            print(
                f"{m['metric']:>14}: base {m['base']:9.3f}  fine-tuned {m['tuned']:9.3f}  "
                f"Δ {m['difference']:+8.3f}"
                + (f"  95% CI [{ci[0]:+.3f}, {ci[1]:+.3f}]" if ci else "")
            )
        print(
            f"gentune: written {a.out}/report.html, comparison.json, metrics.json, "
            f"predictions.jsonl{', checks.json' if 'checks' in result else ''} and base/"
        )
        return
    print(json.dumps({k: v for k, v in result.items() if k != "meta"}, indent=2))
    print(f"gentune: written {a.out}/metrics.json and {a.out}/predictions.jsonl")


def cmd_serve(a) -> None:
    """gentune serve."""
    import os

    from gentune import DEFAULT_MODEL
    from gentune.config import ServeSettings
    from gentune.serving.app import serve

    given = _given(a, ServeSettings)
    given["api_key"] = given.get("api_key") or os.environ.get("GENTUNE_API_KEY") or None
    settings = ServeSettings(**given)
    serve(
        a.model or DEFAULT_MODEL,
        host=a.host,
        port=a.port,
        settings=settings,
        precision=a.precision,
        quantize=a.quantize,
    )


def cmd_demo(a) -> None:
    """gentune demo."""
    if a.distill:
        from gentune.distill.demo import demo_distill

        demo_distill(
            a.out if a.out != "runs/demo" else "runs/distill-demo",
            gold=a.gold_rows,
            inputs=a.input_rows,
            test=a.test_rows,
            max_steps=a.max_steps,
            progress=not a.no_progress,
        )
        return
    from gentune.demo import demo

    demo(a.out, epochs=a.epochs, max_steps=a.max_steps, limit=a.limit, progress=not a.no_progress)


def _add_train_flags(p: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field (absent unless given: the recipe's value stays)."""
    from gentune.config import TrainConfig

    add_settings(
        p,
        TrainConfig,
        keep_defaults=True,
        extra={
            "data": {"action": "append", "metavar": "FILE[:WEIGHT]"},
            "resume": {
                "nargs": "?",
                "const": "latest",
                "metavar": "CHECKPOINT",
                "help": "continue the run in --out from the latest complete checkpoint, or from "
                "CHECKPOINT",
            },
        },
    )


def cmd_distill(a) -> None:
    """gentune distill: label inputs with a teacher, filter, train the student, report."""
    from gentune.config import DistillSettings
    from gentune.distill.pipeline import distill

    distill(DistillSettings(**_given(a, DistillSettings)))


def cmd_explain(a) -> None:
    """gentune explain: a run against its base, per token, and what it memorised."""
    from gentune.config import ChecksSettings, ExplainSettings
    from gentune.trust.explain import explain

    if a.out:
        _out_dir(a.out)
    checks = ChecksSettings(**_given(a, ChecksSettings))
    with _writing(a.out):  # one writer per output directory
        explain(ExplainSettings(**_given(a, ExplainSettings)), checks=checks)


def cmd_runs(a) -> None:
    """gentune runs [DIR…]: the runs under directories; gentune runs compare RUN RUN… --out DIR."""
    from gentune.runs import compare as runs

    if a.paths[:1] == ["compare"]:
        if not a.out:
            raise UsageError("runs compare: give --out DIR for the page")
        _out_dir(a.out)
        with _writing(a.out):
            page = runs.compare(
                a.paths[1:], a.out, data=a.data, bootstrap=a.bootstrap, progress=not a.no_progress
            )
        print(f"gentune: the comparison is in {page}")
        return
    if a.out or a.data:
        raise UsageError("runs: --out and --data belong to `gentune runs compare`")
    found = runs.find_runs(a.paths or ["runs"])
    if not found:
        print(f"gentune: no runs under {', '.join(a.paths or ['runs'])}")
        return
    print(runs.table([runs.summary(p) for p in found]))


def cmd_sweep(a) -> None:
    """gentune sweep: an Optuna study over training settings; or one worker of it (--worker)."""
    from gentune.config import SweepSettings
    from gentune.runs import sweep

    settings = SweepSettings(**_given(a, SweepSettings))
    _out_dir(settings.out)
    if a.worker is not None:  # (its share of the threads came as OMP_NUM_THREADS)
        sweep.work(settings, a.worker)
        return
    print(sweep.sweep(settings))


def cmd_models(a) -> None:
    """gentune models: the embedded models, their size, licence and state."""
    from gentune.models.registry import EMBEDDED, converted_path, is_converted, is_installed

    print("| name | model | parameters | licence | package | converted |")
    print("|---|---|---|---|---|---|")
    for name, e in EMBEDDED.items():
        package = "installed" if is_installed(name) else f"missing: {e.install}"
        converted = str(converted_path(name)) if is_converted(name) else "not yet (on first use)"
        print(f"| {name} | {e.model} | {e.parameters} | {e.licence} | {package} | {converted} |")


def cmd_demo_data(a) -> None:
    """gentune demo-data."""
    from gentune.demo import write_demo_data

    for path in write_demo_data(a.out):
        print(path)


def _add_train_and_plan(sub) -> None:
    """`train` and `plan`: the same settings (a YAML recipe, flags, key=value overrides)."""
    for name, func, text in (
        ("train", cmd_train, "fine-tune a model on a data file"),
        ("plan", cmd_plan, "show what training would do, before it runs"),
    ):
        p = sub.add_parser(
            name,
            help=text,
            argument_default=argparse.SUPPRESS,
            description=f"{text}. Settings come from --config (a YAML recipe), "
            "then flags, then key=value overrides.",
        )
        p.add_argument("--config", help="YAML recipe (see examples/)")
        _add_train_flags(p)
        if name == "plan":
            p.add_argument(
                "--test",
                action="append",
                metavar="FILE",
                help="a test file to check for rows that are also in the training data "
                "(repeatable; the validation rows are always checked)",
            )
            p.add_argument(
                "--fail-on-leak",
                action="store_true",
                help="stop with an error when validation or test rows are (nearly) training rows",
            )
            p.add_argument("--space", help="a sweep's space (YAML): its trials' estimated time")
            p.add_argument("--trials", type=_positive(int), default=8, help="with --space")
            p.add_argument("--workers", type=_positive(int), default=1, help="with --space")
        p.add_argument(
            "overrides",
            nargs="*",
            metavar="key=value",
            help="override any setting, e.g. lr=1e-4 epochs=2",
        )
        p.set_defaults(func=func)


def _add_distill_and_explain(sub) -> None:
    """`distill` and `explain`: their flags from their settings' fields."""
    from gentune.config import DistillSettings, ExplainSettings

    p = sub.add_parser(
        "distill",
        help="label unlabelled inputs with a teacher, then train a student on gold + pseudo",
        description="A teacher (a gentune run, a model, or an OpenAI-compatible URL) labels "
        "--inputs into OUT/labels.jsonl (resumable), the labels are filtered into "
        "OUT/pseudo.jsonl, a student is trained on --gold mixed with them, and with --test the "
        "base, student(s) and teacher are scored side by side (OUT/report.md).",
    )
    add_settings(
        p,
        DistillSettings,
        extra={k: {"required": True} for k in ("task", "teacher", "inputs", "out")},
    )
    p.set_defaults(func=cmd_distill)

    p = sub.add_parser(
        "explain",
        help="what fine-tuning changed: a run against its base, per token; memorisation",
        description="Both models teacher-forced over the run's greedy outputs and the references "
        "of --data: the tuned token's rank under the base (shifted beyond 3), Δ log-prob, KL, "
        "alternatives; memorisation of the training rows; OUT/explain.html and explain.json.",
    )
    p.add_argument("run", help="run directory (gentune train's --out)")
    add_settings(
        p, ExplainSettings, skip=("run",), extra={k: {"required": True} for k in ("data", "out")}
    )
    _add_checks(p)
    p.set_defaults(func=cmd_explain)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(
        prog="gentune", description="Fine-tune language models for text generation, offline."
    )
    from gentune.config import ServeSettings

    sub = parser.add_subparsers(dest="command", required=True)

    _add_train_and_plan(sub)

    p = sub.add_parser("generate", help="generate from a run or model")
    p.add_argument("model", help="run directory, embedded name, model directory or hub id")
    p.add_argument("prompt", nargs="?", help="one input to generate from")
    p.add_argument("--data", help="file of inputs to generate from")
    p.add_argument("--out", help="directory for predictions.jsonl (with --data)")
    p.add_argument("--task", help="task, for a plain model (runs know theirs)")
    p.add_argument("--no-stream", action="store_true", help="print a single output at the end")
    _add_fields(p)
    _add_template(p)
    _add_decoding(p)
    _add_precision(p)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("chat", help="an interactive multi-turn chat with a model or run")
    p.add_argument("model", help="run directory, embedded name, model directory or hub id")
    p.add_argument("--system", help="system message")
    _add_decoding(p)
    _add_precision(p)
    p.set_defaults(func=cmd_chat)

    p = sub.add_parser("export", help="merge a run into a plain transformers model directory")
    p.add_argument("run", help="run directory")
    p.add_argument("--out", required=True, help="directory to write")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("evaluate", help="score a run or model on a labelled file")
    p.add_argument("model", help="run directory, embedded name, model directory or hub id")
    p.add_argument("--data", required=True, help="labelled file")
    p.add_argument("--out", required=True, help="directory for predictions.jsonl, metrics.json")
    p.add_argument("--task", help="task, for a plain model (runs know theirs)")
    p.add_argument("--limit", type=_positive(int), help="score only the first N rows")
    p.add_argument(
        "--compare",
        metavar="BASE",
        help="also score BASE (a model or run) on the same rows; writes report.html",
    )
    p.add_argument(
        "--bootstrap",
        type=_positive(int),
        default=1000,
        help="paired-bootstrap resamples for the intervals (seeded by --seed)",
    )
    p.add_argument(
        "--train",
        metavar="FILE",
        help="training rows for the distance-to-training slices (default: a run's own)",
    )
    _add_checks(p)
    _add_fields(p)
    _add_template(p)
    _add_decoding(p)
    _add_precision(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("serve", help="an OpenAI-compatible API and a playground page")
    p.add_argument(
        "model",
        nargs="?",
        default=None,
        help="run directory, exported directory, model name or hub id "
        "(default: the embedded model)",
    )
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default loopback only; 0.0.0.0 = every "
        "interface, set an API key then)",
    )
    p.add_argument("--port", type=_port, default=8000, help="port to listen on (1-65535)")
    add_settings(p, ServeSettings)
    _add_precision(p)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("demo", help="fine-tune the embedded model on ACLSum and compare")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--epochs", type=_positive(float), default=2.0)
    p.add_argument("--max-steps", type=_positive(int))
    p.add_argument(
        "--limit", type=_positive(int), help="evaluate on the first N validation rows only"
    )
    p.add_argument("--no-progress", action="store_true")
    p.add_argument(
        "--distill",
        action="store_true",
        help="the distillation demo instead: Gemma-3-270M teaches SmolLM2-135M German -> "
        "English through gentune serve (Debian's trans-de-en; out: runs/distill-demo)",
    )
    p.add_argument("--gold-rows", type=_positive(int), default=300, help="--distill: gold rows")
    p.add_argument("--input-rows", type=_positive(int), default=2000, help="--distill: inputs")
    p.add_argument("--test-rows", type=_positive(int), default=500, help="--distill: test rows")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("demo-data", help="write the ACLSum data (titles, summaries) as JSONL")
    p.add_argument("--out", default="runs/data")
    p.set_defaults(func=cmd_demo_data)

    _add_distill_and_explain(sub)

    _add_runs(sub)

    p = sub.add_parser("models", help="list the embedded models: size, licence, converted or not")
    p.set_defaults(func=cmd_models)
    return parser


def _add_runs(sub) -> None:
    """gentune runs [DIR…] and gentune runs compare RUN RUN… --out DIR."""
    p = sub.add_parser(
        "runs",
        help="list the runs under directories (default runs/); `runs compare RUN RUN… --out DIR`",
        description="gentune runs [DIR…]: a table of the runs under each directory. "
        "gentune runs compare RUN RUN… --out DIR [--data FILE]: one page with their curves "
        "overlaid, the settings that differ, their metrics on FILE with paired intervals "
        "against the first run, and their samples at the same rows.",
    )
    p.add_argument("paths", nargs="*", help="directories to list; or: compare RUN RUN…")
    p.add_argument("--out", help="runs compare: the directory for compare.html and compare.json")
    p.add_argument("--data", help="runs compare: a labelled file to score every run on")
    p.add_argument("--bootstrap", type=int, default=1000, help="runs compare: resamples")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_runs)

    from gentune.config import SweepSettings

    p = sub.add_parser(
        "sweep",
        help="search training settings with Optuna: each trial a run, the best as a recipe",
        description="An Optuna study (TPE, median pruning on each validation) over the settings "
        "of --space, each trial a run of --config with them under OUT/trials/; workers on this "
        "machine (--workers) or other machines (--storage URL) share the study. Writes "
        "OUT/trials.csv, OUT/best.yaml (gentune train --config takes it) and OUT/compare/.",
    )
    add_settings(
        p, SweepSettings, extra={k: {"required": True} for k in ("config", "space", "out")}
    )
    p.add_argument("--worker", type=int, help=argparse.SUPPRESS)  # a process of --workers
    p.set_defaults(func=cmd_sweep)


def main(argv: list[str] | None = None) -> int:
    """Run a command; returns the exit code: 0 done, 2 a user's mistake (one line naming the
    file, row, field or flag and what to do), 130 interrupted, 1 a bug (with its traceback)."""
    import logging
    import warnings

    # third-party noise that users cannot act on: a deprecation, the GPU kernels torchao
    # cannot load on a CPU, torch's notes on its own internals
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
    warnings.filterwarnings("ignore", message=".*better way to train encoder-decoder models.*")
    logging.getLogger("torchao").setLevel(logging.ERROR)
    logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)
    from gentune.training.memory import bound_heap, bound_kernel_cache

    bound_kernel_cache()  # before any command's first matmul (serve and generate too)
    bound_heap()  # before any model is loaded
    parser = build_parser()
    try:
        args, unknown = parser.parse_known_args(argv)
    except SystemExit as e:  # --help (0), or argparse's own usage error (2, already printed)
        return e.code if isinstance(e.code, int) else 2
    name = f"gentune {args.command}"
    if unknown:  # named by the subcommand, with the nearest flag it has
        return _fail(
            name,
            f"unrecognized arguments: {' '.join(unknown)}"
            + _nearest_flag(parser, args.command, unknown[0]),
        )
    try:
        args.func(args)
    except GentuneError as e:
        return _fail(name, str(e))
    except OSError as e:
        if e.filename is None:
            raise
        # a path the user gave: missing, unreadable, not writable, or the disk is full
        return _fail(name, f"{e.filename}: {e.strerror or e}")
    except KeyboardInterrupt:
        print(
            f"\n{name}: interrupted"
            + (" (continue the run with --resume)" if args.command == "train" else ""),
            file=sys.stderr,
        )
        return 130
    except Exception:  # noqa: BLE001 — a bug: show everything, and ask for a report
        import traceback

        traceback.print_exc()
        print(
            f"{name}: internal error: this is a bug in gentune, not in your input; please "
            "report it with the command you ran and the traceback above",
            file=sys.stderr,
        )
        return 1
    return 0


def _nearest_flag(parser: argparse.ArgumentParser, command: str, given: str) -> str:
    import difflib

    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    flags = [f for a in sub.choices[command]._actions for f in a.option_strings]
    close = difflib.get_close_matches(given.split("=")[0], flags, n=1)
    return f" (did you mean {close[0]}?)" if close else f" (see gentune {command} --help)"


def _fail(name: str, message: str) -> int:
    text = " ".join(line.strip() for line in message.strip().splitlines()) or "failed"
    print(f"{name}: error: {text}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
