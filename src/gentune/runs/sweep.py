"""`gentune sweep`: an Optuna study over training settings, each trial an ordinary run.

The TPE sampler proposes settings from the space (a YAML file); each trial trains a normal run
directory under OUT/trials/ from the base recipe with them; every validation reports its value
(the task's metric on the validation rows, never test rows) to a median pruner, at the same
share of an epoch in every trial. Workers - processes on this machine, or on several machines
through a database URL - share one study through Optuna's storage (by default a journal file,
OUT/study.journal): a worker claims a trial only while fewer than --trials are finished or
running, so the sweep ends with exactly that many, and a trial whose process died (killed) is
marked failed and replaced, never a finished one repeated. At the end: a table of the trials
(OUT/trials.csv, sweep.json), the best settings as a recipe (OUT/best.yaml) and the top trials
side by side (OUT/compare, `gentune runs compare`).
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import io
import math
import os
import socket
import subprocess
import sys
import threading
import time
import warnings
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Any

from gentune.config import SweepSettings, TrainConfig, load_recipe
from gentune.errors import ConfigError, GentuneError, RunError, UsageError
from gentune.lock import alive
from gentune.runs.space import WEIGHTS, Dimension, load_space, objective, trial_settings

PRUNE_AFTER = 2  # trials finished before the median pruner stops any


def _base(settings: SweepSettings) -> tuple[dict, list[Dimension]]:
    """The base recipe and the space, checked together: the base with each dimension's first
    value must be a valid training config before any trial starts."""
    base, dims = load_recipe(settings.config), load_space(settings.space)
    if WEIGHTS in base:
        raise ConfigError(f"{settings.config}: {WEIGHTS} belongs in the space file")
    first = {d.name: d.choices[0] if d.choices else d.low for d in dims}
    TrainConfig.from_dict(trial_settings(base, first, Path(settings.out) / "trials" / "check"))
    return base, dims


def require_optuna() -> None:
    """A one-line error where Optuna is not installed."""
    import importlib.util

    if importlib.util.find_spec("optuna") is None:
        raise UsageError("Optuna is not installed: pip install 'gentune[sweep]'")


# ---- the study ------------------------------------------------------------------------------
def open_study(settings: SweepSettings, base: dict, seed: int):
    """The study in its storage (created on first use), with a seeded TPE sampler and the
    median pruner."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    _, direction = objective(base)
    storage: Any
    if settings.storage is None:
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        Path(settings.out).mkdir(parents=True, exist_ok=True)
        storage = JournalStorage(JournalFileBackend(str(Path(settings.out) / "study.journal")))
    else:  # a database URL: heartbeats let other machines see a trial whose worker died
        # (each trial runs in the heartbeat thread as optimize runs it: its warning does not apply)
        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            storage = optuna.storages.RDBStorage(
                settings.storage, heartbeat_interval=60, grace_period=300
            )
    pruner = (
        optuna.pruners.MedianPruner(n_startup_trials=PRUNE_AFTER, n_warmup_steps=0)
        if settings.prune
        else optuna.pruners.NopPruner()
    )
    study = optuna.create_study(
        study_name=settings.study,
        storage=storage,
        sampler=optuna.samplers.TPESampler(seed=seed),
        pruner=pruner,
        direction=direction,
        load_if_exists=True,
    )
    if study.direction.name.lower() != direction:
        raise RunError(
            f"study {settings.study!r} in its storage was made to {study.direction.name.lower()}"
            f", this base recipe's metric to {direction}; give another --study or --out"
        )
    return study


def _states(*names: str):
    from optuna.trial import TrialState

    return tuple(getattr(TrialState, n) for n in names)


def fail_stale(study, log) -> None:
    """Mark failed the trials left running by a process on this machine that is gone (a
    killed worker), so another trial takes their place; other machines' trials are failed by
    the database storage's heartbeat."""
    import optuna
    from optuna.storages import fail_stale_trials
    from optuna.trial import TrialState

    host = socket.gethostname()
    for t in study.get_trials(deepcopy=False, states=_states("RUNNING")):
        pid = t.user_attrs.get("pid")
        if t.user_attrs.get("host") == host and pid and pid != os.getpid() and not alive(pid):
            study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
            log(
                f"gentune: sweep: trial {t.number} was left running by process {pid}, which "
                "is gone (killed?): marked failed, another trial takes its place"
            )
    if isinstance(study._storage, optuna.storages.RDBStorage):  # (heartbeats)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            fail_stale_trials(study)


@contextlib.contextmanager
def _claim(out: Path):
    """One worker of this machine at a time counts the trials and takes the next one."""
    out.mkdir(parents=True, exist_ok=True)
    fd = os.open(out / ".claim.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _next_trial(study, settings: SweepSettings, started: float, log):
    """The next trial for this worker, or None: the sweep has its trials (finished, pruned or
    running), this worker's time budget is spent, or as many trials failed as were asked."""
    with _claim(Path(settings.out)):
        fail_stale(study, log)
        states = Counter(t.state.name for t in study.get_trials(deepcopy=False))
        taken, failed = states["COMPLETE"] + states["PRUNED"], states["FAIL"]
        if taken + states["RUNNING"] >= settings.trials:
            return None
        if settings.time_budget and time.time() - started > settings.time_budget:
            log(f"gentune: sweep: the time budget ({settings.time_budget:g} s) is spent")
            return None
        if failed >= settings.trials:
            raise RunError(f"sweep: {failed} trials failed (see above); fix the recipe or space")
        trial = study.ask()
        trial.set_user_attr("host", socket.gethostname())
        trial.set_user_attr("pid", os.getpid())
        return trial


@contextlib.contextmanager
def _heartbeat(study, trial):
    """Optuna's heartbeat thread for the trial where the storage keeps heartbeats."""
    try:
        from optuna.storages._heartbeat import get_heartbeat_thread
    except ImportError:  # (a private module: without it, no heartbeat)
        yield
        return
    with get_heartbeat_thread(trial._trial_id, study._storage):
        yield


def run_trial(study, trial, base: dict, dims: list[Dimension], settings: SweepSettings, log):
    """Train one trial's run, reporting each validation's value to the pruner; tell the study
    how it ended (complete with the run's best value, pruned, or failed)."""
    from optuna.trial import TrialState

    from gentune.rundir import read_manifest
    from gentune.training.train import train

    params = {d.name: d.suggest(trial) for d in dims}
    out = Path(settings.out) / "trials" / f"trial-{trial.number:03d}"
    trial.set_user_attr("run", str(out))
    log(f"gentune: sweep: trial {trial.number} starts: {_params_text(params)} → {out}")
    pruned, epochs = [False], []

    def on_validation(row: dict, value: float) -> bool:
        epochs.append(float(row["epoch"]))
        trial.report(value, round(epochs[-1] * 100))  # % of an epoch: the same in every trial
        pruned.append(settings.prune and trial.should_prune())
        return pruned[-1]

    started = time.time()
    try:
        with _heartbeat(study, trial):
            cfg = TrainConfig.from_dict(trial_settings(base, params, out))
            run = train(cfg, log=_prefixed(log, trial.number), on_validation=on_validation)
    except GentuneError as e:
        log(f"gentune: sweep: trial {trial.number} failed: {e}")
        study.tell(trial, state=TrialState.FAIL)
        return
    except BaseException:
        study.tell(trial, state=TrialState.FAIL)
        raise
    trial.set_user_attr("seconds", round(time.time() - started, 1))
    best = (read_manifest(run).get("stats") or {}).get("best_metric") or {}
    value = next(iter(best.values()), None)
    if pruned[-1]:
        study.tell(trial, state=TrialState.PRUNED)
        log(f"gentune: sweep: trial {trial.number} pruned at epoch {epochs[-1]:.2f}")
    elif value is None or not math.isfinite(value):
        log(f"gentune: sweep: trial {trial.number}: no validation value (validation rows?)")
        study.tell(trial, state=TrialState.FAIL)
    else:
        study.tell(trial, value)
        log(f"gentune: sweep: trial {trial.number} done: {objective(base)[0]} {value:.4f}")


def _prefixed(log, number: int):
    return lambda line: log(f"[trial {number}] {line.removeprefix('gentune: ')}")


def _params_text(params: dict) -> str:
    return ", ".join(
        f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items()
    )


def work(settings: SweepSettings, index: int = 0, *, log=print) -> None:
    """One worker: claim trials and train them until the sweep has its trials."""
    require_optuna()
    import numpy as np
    import optuna

    base, dims = _base(settings)
    study = open_study(settings, base, seed=settings.seed)
    # every worker samples apart: its own seed from (--seed, its index, the trials so far)
    mixed = np.random.SeedSequence([settings.seed, index, len(study.trials)])
    study.sampler = optuna.samplers.TPESampler(seed=int(mixed.generate_state(1)[0]))
    started = time.time()
    while (trial := _next_trial(study, settings, started, log)) is not None:
        run_trial(study, trial, base, dims, settings, log)


# ---- the command ----------------------------------------------------------------------------
def sweep(settings: SweepSettings, *, log=print) -> Path:
    """Run the sweep's workers (this process, or `workers` processes sharing the CPU threads),
    then write its results; returns OUT/best.yaml (or raises: no trial finished)."""
    require_optuna()
    _base(settings)  # a broken recipe or space stops before any process starts
    if settings.workers == 1:
        work(settings, 0, log=log)
    else:
        _spawn(settings, log)
    return results(settings, log=log)


def worker_command(settings: SweepSettings, index: int) -> list[str]:
    """The command line of worker `index`: `gentune sweep` with the same settings."""
    cmd = [sys.executable, "-m", "gentune", "sweep", "--worker", str(index)]
    for name, value in asdict(settings).items():
        if value is None or name == "workers":
            continue
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            cmd.append(flag if value else "--no-" + flag[2:])
        else:
            cmd += [flag, str(value)]
    return cmd


def _spawn(settings: SweepSettings, log) -> None:
    """`workers` processes, each with its share of the threads, their lines prefixed; they
    end with this one (a killed sweep leaves no worker behind)."""
    threads = max(1, (os.cpu_count() or 1) // settings.workers)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
    procs = [
        subprocess.Popen(
            worker_command(settings, k),
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            preexec_fn=_die_with_parent,
        )
        for k in range(settings.workers)
    ]

    def relay(k: int, proc) -> None:
        for line in proc.stdout:
            log(f"[worker {k}] {line.rstrip()}")

    relays = [threading.Thread(target=relay, args=(k, p), daemon=True) for k, p in enumerate(procs)]
    for t in relays:
        t.start()
    codes = [p.wait() for p in procs]
    for t in relays:
        t.join()
    if any(codes):
        log(f"gentune: sweep: worker exit codes {codes}; the study keeps what they finished")


def _die_with_parent() -> None:
    """(Linux) a worker receives SIGTERM when the sweep that started it dies."""
    import ctypes
    import signal

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def trial_rows(study) -> list[dict]:
    """One row per trial: number, state, value, seconds, its settings and run directory."""
    return [
        {
            "trial": t.number,
            "state": t.state.name.lower(),
            "value": t.value,
            "seconds": t.user_attrs.get("seconds"),
            **t.params,
            "run": t.user_attrs.get("run", ""),
        }
        for t in study.get_trials(deepcopy=False)
    ]


def results(settings: SweepSettings, *, log=print) -> Path:
    """OUT/trials.csv and sweep.json, the table printed, OUT/best.yaml, and the top trials
    side by side in OUT/compare."""
    from gentune.rundir import write_json, write_text

    base, dims = _base(settings)
    study = open_study(settings, base, seed=settings.seed)
    metric, direction = objective(base)
    rows = trial_rows(study)
    out = Path(settings.out)
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))
    writer.writeheader()
    writer.writerows(rows)
    write_text(out / "trials.csv", text.getvalue())
    log(table(rows, metric))
    done = study.get_trials(deepcopy=False, states=_states("COMPLETE"))
    if not done:
        raise RunError(f"sweep {out}: no trial finished, so there are no best settings yet")
    best = study.best_trial
    path = write_best(out / "best.yaml", base, best, metric, len(rows))
    ranked = sorted(done, key=lambda t: t.value, reverse=direction == "maximize")
    top = [t.user_attrs["run"] for t in ranked[: settings.top]]
    page = _compare(top, out / "compare", log) if len(top) > 1 else None
    write_json(
        out / "sweep.json",
        {
            "metric": metric,
            "direction": direction,
            "space": [d.describe() for d in dims],
            "trials": rows,
            "best": {"trial": best.number, "value": best.value, "params": best.params},
            "compare": str(page) if page else None,
        },
    )
    log(
        f"gentune: sweep: best trial {best.number}: {metric} {best.value:.4f} "
        f"({_params_text(best.params)}); its recipe: {path}"
    )
    return path


def table(rows: list[dict], metric: str) -> str:
    """The trials as an aligned text table."""
    params = [k for k in dict.fromkeys(k for r in rows for k in r) if k not in _ROW_KEYS]
    head = ["trial", "state", metric, "seconds", *params]

    def cell(v) -> str:
        return "-" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)

    body = [
        [cell(r["trial"]), r["state"], cell(r["value"]), cell(r["seconds"])]
        + [cell(r.get(p)) for p in params]
        for r in rows
    ]
    widths = [max(len(x) for x in col) for col in zip(head, *body, strict=True)]
    return "\n".join(
        "  ".join(x.ljust(w) for x, w in zip(line, widths, strict=True)) for line in [head, *body]
    )


_ROW_KEYS = {"trial", "state", "value", "seconds", "run"}


def write_best(path: Path, base: dict, best, metric: str, n: int) -> Path:
    """The base recipe with the best trial's settings: `gentune train --config` takes it."""
    import yaml

    from gentune.rundir import write_text

    settings = trial_settings(base, best.params, path.parent / "best-run")
    settings = {k: v for k, v in settings.items() if k not in ("resume", "overwrite", "progress")}
    head = (
        f"# gentune sweep: the best of {n} trials (trial {best.number}: {metric} "
        f"{best.value:.4f} on the validation rows)\n"
    )
    write_text(path, head + yaml.safe_dump(settings, sort_keys=False, allow_unicode=True))
    return path


def _compare(runs: list[str], out: Path, log) -> Path | None:
    """`runs compare` of the top trials (a trial run that cannot be compared is said, not
    fatal: the table and best.yaml stand)."""
    from gentune.runs.compare import compare

    try:
        return compare(runs, out, progress=False)
    except GentuneError as e:
        log(f"gentune: sweep: no comparison page: {e}")
        return None


# ---- plan -----------------------------------------------------------------------------------
def plan_sweep(cfg: TrainConfig, space: str, trials: int, workers: int = 1) -> str:
    """The sweep's trials × the estimated training time per trial, from a measured probe per
    method the space can choose, before anything runs."""
    from dataclasses import replace

    from gentune.training.plan import measure

    dims = {d.name: d for d in load_space(space)}
    base = {k: v for k, v in cfg.to_dict().items() if v is not None}
    metric, direction = objective(base)
    methods = list(dims["method"].choices or ()) if "method" in dims else [cfg.method]
    per_epoch = {}
    for method in methods:
        resolved, probe = measure(replace(cfg, method=method))
        per_epoch[resolved.method] = probe["seconds_per_epoch"]
        epochs = _range(dims.get("epochs"), resolved.passes)
        steps = probe["steps_per_epoch"]
    if cfg.max_steps:
        epochs = tuple(min(e, cfg.max_steps / steps) for e in epochs)
    low = min(per_epoch.values()) * epochs[0]
    high = max(per_epoch.values()) * epochs[1]
    lines = [
        f"sweep: {trials} trials over {workers} worker process(es); objective {metric} on "
        f"the validation rows ({direction}), median pruning at each validation",
        "space: " + "; ".join(d.describe() for d in dims.values()),
        "training time per epoch (measured probe): "
        + ", ".join(f"{m} {_duration(s)}" for m, s in per_epoch.items())
        + f"; epochs {epochs[0]:.3g}–{epochs[1]:.3g}",
        f"per trial: about {_duration(low)}–{_duration(high)} of training (validation "
        "generation comes on top)",
        f"in all: about {_duration(trials * low)}–{_duration(trials * high)} of training "
        "(workers on one machine share its cores: more of them add no speed)",
    ]
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


def _range(dim: Dimension | None, default: float) -> tuple[float, float]:
    if dim is None:
        return default, default
    if dim.choices is not None:
        return float(min(dim.choices)), float(max(dim.choices))
    return float(dim.low or default), float(dim.high or default)
