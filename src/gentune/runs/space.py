"""A sweep's space and objective: the YAML file of settings to search (`[choices]` or
`{low, high, log}` per training setting; `data_weights` per --data file), checked whole with
every problem in one line; the objective (the task's metric on the validation rows, its
direction); and a trial's settings (the base recipe with the trial's values, scored on every
validation row)."""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal

from gentune.config import TrainConfig, load_recipe
from gentune.errors import ConfigError
from gentune.metrics import METRICS

WEIGHTS = "data_weights"  # the space's key for the base recipe's --data files' mixing weights
# settings a space may not vary: they define the run directory, the validation rows (the
# objective must be measured on the same rows in every trial) or what is measured
FIXED = frozenset(
    "task out val val_fraction seed resume overwrite metric eval_generate eval_budget_s "
    "samples progress data".split()
)
OBJECTIVE_ROWS = 10_000  # eval_generate of a trial unless the base sets it: every validation row


@dataclass(frozen=True)
class Dimension:
    """One setting of the space: categorical choices, or a range (int where both ends are)."""

    name: str
    choices: tuple | None = None
    low: float | None = None
    high: float | None = None
    log: bool = False

    def suggest(self, trial) -> Any:
        if self.choices is not None:
            return trial.suggest_categorical(self.name, list(self.choices))
        assert self.low is not None and self.high is not None
        if isinstance(self.low, int) and isinstance(self.high, int):
            return trial.suggest_int(self.name, self.low, self.high, log=self.log)
        return trial.suggest_float(self.name, float(self.low), float(self.high), log=self.log)

    def describe(self) -> str:
        if self.choices is not None:
            return f"{self.name} {{{', '.join(map(str, self.choices))}}}"
        scale = "log-uniform" if self.log else "uniform"
        return f"{self.name} {scale} [{self.low:g}, {self.high:g}]"


def load_space(path: str | Path) -> list[Dimension]:
    """The space file's dimensions; every problem in it named at once (a ConfigError)."""
    raw = load_recipe(path)
    known = {f.name for f in fields(TrainConfig)} - FIXED
    dims, problems = [], []
    for name, value in raw.items():
        if name == WEIGHTS:
            if not isinstance(value, dict) or not value:
                problems.append(f"{WEIGHTS}: a mapping of --data file → range or choices")
                continue
            for file, spec in value.items():
                dims.append(_dimension(f"weight:{file}", spec, problems))
        elif name not in known:
            why = "fixed in a sweep" if name in FIXED else "not a training setting"
            problems.append(f"{name}: {why}")
        else:
            dims.append(_dimension(name, value, problems))
    if not raw:
        problems.append("empty: give at least one setting to search over")
    if problems:
        raise ConfigError(f"{path}: " + "; ".join(problems), problems)
    return dims


def _dimension(name: str, spec, problems: list[str]) -> Dimension:
    if isinstance(spec, list):
        if not spec or not all(isinstance(v, str | int | float | bool) for v in spec):
            problems.append(f"{name}: choices must be a non-empty list of plain values")
        return Dimension(name, choices=tuple(spec))
    if (
        isinstance(spec, dict)
        and set(spec) <= {"low", "high", "log"}
        and {"low", "high"} <= set(spec)
    ):
        low, high, log = spec["low"], spec["high"], bool(spec.get("log", False))
        numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in (low, high))
        if not numbers or not low < high or (log and low <= 0):
            problems.append(f"{name}: need numbers low < high (and low > 0 with log)")
        return Dimension(name, low=low, high=high, log=log)
    problems.append(f"{name}: give [choices] or {{low: L, high: H, log: true|false}}")
    return Dimension(name, choices=())


def objective(base: dict) -> tuple[str, Literal["maximize", "minimize"]]:
    """(metric, 'maximize' | 'minimize'): the base's --metric, else the task's own metric."""
    from gentune.data.tasks import get_task

    metric = base.get("metric", "auto")
    if metric == "auto":
        metric = get_task(base["task"]).validation_metric or "val_loss"
    better = metric != "val_loss" and METRICS[metric].higher_is_better
    return metric, "maximize" if better else "minimize"


def trial_settings(base: dict, params: dict, out: Path) -> dict:
    """The base recipe with a trial's settings, run in `out`, scored on every validation row."""
    settings = {**base, **{k: v for k, v in params.items() if not k.startswith("weight:")}}
    weights = {k.removeprefix("weight:"): v for k, v in params.items() if k.startswith("weight:")}
    if weights:
        files = TrainConfig.from_dict({**base, "out": str(out)}).data_files
        settings["data"] = [f"{p}:{weights.get(p, w)}" for p, w in files]
    settings.setdefault("eval_generate", OBJECTIVE_ROWS)
    settings.setdefault("eval_budget_s", 1e9)  # the same rows in every trial, never a budget's
    return {
        **settings,
        "out": str(out),
        "metric": objective(base)[0],
        "progress": False,
        "resume": None,
        "overwrite": False,
    }
