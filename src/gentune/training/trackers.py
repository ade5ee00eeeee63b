"""--report-to: the numbers of metrics.csv, the run's settings and its samples also sent to an
experiment tracker, local-first: Trackio (a SQLite file per project) or MLflow (a SQLite store
and an artifact folder, or any tracking URI).

A tracker is never silent and never fatal: one that is not installed, cannot start, or fails to
log prints one line and is dropped, and training goes on; at the end each tracker's store is
read back, and fewer rows there than were sent is said too. metrics.csv stays the source of
truth."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

TRACKERS = ("trackio", "mlflow")
PACKAGES = {"trackio": "trackio", "mlflow": "mlflow"}  # tracker -> the module it needs


class TrackerError(Exception):
    """A tracker that could not start, log or keep what it was sent."""


def run_name(out: Path) -> str:
    """The run's name in a tracker: its folder, and a hash of its path (two sweeps' trial-000
    are two runs; a resumed run is the same one)."""
    digest = hashlib.sha1(str(out.resolve()).encode()).hexdigest()[:6]
    return f"{out.name}-{digest}"


def _numbers(row: dict) -> dict[str, float]:
    return {
        k: float(v)
        for k, v in row.items()
        if k != "step" and isinstance(v, int | float) and not isinstance(v, bool)
    }


class Trackio:
    """Trackio: the project's SQLite file in --tracker-dir (else $TRACKIO_DIR, else trackio's
    default, ~/.cache/huggingface/trackio); `trackio show --project P` shows it."""

    name = "trackio"

    def __init__(self, project: str, run: str, directory: str | None):
        self.project, self.run, self.directory, self.sent = project, run, directory, 0

    def start(self, config: dict) -> str:
        import contextlib
        import io
        import sys

        if self.directory:
            loaded = sys.modules.get("trackio.utils")
            wanted = Path(self.directory).resolve()
            if loaded is not None and Path(loaded.TRACKIO_DIR).resolve() != wanted:
                raise TrackerError(
                    f"trackio already logs to {loaded.TRACKIO_DIR} in this process (its "
                    "folder is fixed when it is imported)"
                )
            before = os.environ.get("TRACKIO_DIR")
            os.environ["TRACKIO_DIR"] = str(wanted)  # read by trackio when it is imported
            try:
                import trackio
            finally:
                if before is None:
                    del os.environ["TRACKIO_DIR"]
                else:
                    os.environ["TRACKIO_DIR"] = before
        import trackio
        from trackio import utils

        where = Path(utils.TRACKIO_DIR)
        _writable(where)
        with contextlib.redirect_stdout(io.StringIO()):  # its banner; ours is one line
            trackio.init(
                project=self.project,
                name=self.run,
                config=config,
                resume="allow",
                embed=False,
                auto_log_cpu=False,
                auto_log_gpu=False,
            )
        return f"{where} (trackio show --project {self.project})"

    def log(self, row: dict) -> None:
        import trackio

        trackio.log(_numbers(row), step=int(row["step"]))
        self.sent += 1

    def samples(self, rows: list[dict], step: int) -> None:
        import trackio

        table = trackio.Table(
            columns=["row", "input", "reference", "output"],
            data=[[r["row"], r["input"], r["reference"], r["output"]] for r in rows],
        )
        trackio.log({"samples": table}, step=step)
        self.sent += 1

    def finish(self) -> None:
        import contextlib
        import io

        import trackio
        from trackio.sqlite_storage import SQLiteStorage

        with contextlib.redirect_stdout(io.StringIO()):
            trackio.finish()
        kept = len(SQLiteStorage.get_logs(self.project, self.run) or [])
        if kept < self.sent:
            raise TrackerError(f"it kept {kept} of the {self.sent} rows sent")


class MLflow:
    """MLflow through its client: --tracker-dir as a SQLite store (DIR/mlflow.db) with the
    artifacts beside it (DIR/artifacts), or a tracking URI (http://…, sqlite:///…); else
    $MLFLOW_TRACKING_URI or MLflow's default."""

    name = "mlflow"

    def __init__(self, project: str, run: str, directory: str | None):
        self.project, self.run, self.directory = project, run, directory
        self.client: Any = None
        self.run_id, self.sent = "", 0

    def _uri(self) -> tuple[str | None, str | None]:
        """(tracking URI, artifact location) from --tracker-dir."""
        if not self.directory:
            return None, None
        if "://" in self.directory or self.directory.startswith("sqlite:"):
            return self.directory, None
        where = Path(self.directory).resolve()
        _writable(where)
        return f"sqlite:///{where / 'mlflow.db'}", (where / "artifacts").as_uri()

    def start(self, config: dict) -> str:
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        uri, artifacts = self._uri()
        self.client = client = MlflowClient(tracking_uri=uri)
        found = client.get_experiment_by_name(self.project)
        experiment = (
            found.experiment_id
            if found
            else client.create_experiment(self.project, artifact_location=artifacts)
        )
        same = client.search_runs(
            [experiment], filter_string=f"tags.`gentune.run` = '{self.run}'", max_results=1
        )
        if same:  # a resumed run continues its record
            self.run_id = same[0].info.run_id
            client.update_run(self.run_id, status="RUNNING")
        else:
            run = client.create_run(experiment, run_name=self.run, tags={"gentune.run": self.run})
            self.run_id = run.info.run_id
            params = [Param(k, json.dumps(v, default=str)[:6000]) for k, v in config.items()]
            client.log_batch(self.run_id, params=params)
        return f"{client.tracking_uri} (experiment {self.project}, run {self.run})"

    def log(self, row: dict) -> None:
        from mlflow.entities import Metric

        stamp, step = int(time.time() * 1000), int(row["step"])
        metrics = [Metric(k, v, stamp, step) for k, v in _numbers(row).items()]
        assert self.client is not None
        self.client.log_batch(self.run_id, metrics=metrics)
        self.sent += 1

    def samples(self, rows: list[dict], step: int) -> None:
        assert self.client is not None
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        self.client.log_text(self.run_id, text, f"samples/step-{step:08d}.jsonl")

    def finish(self) -> None:
        assert self.client is not None
        self.client.set_terminated(self.run_id)
        kept = len(self.client.get_metric_history(self.run_id, "loss"))
        if kept < self.sent:
            raise TrackerError(f"it kept {kept} of the {self.sent} steps sent")


KINDS: dict[str, type[Trackio] | type[MLflow]] = {"trackio": Trackio, "mlflow": MLflow}


def _writable(where: Path) -> None:
    """Raise TrackerError unless a file can be written in `where` (created if missing)."""
    try:
        where.mkdir(parents=True, exist_ok=True)
        probe = where / f".gentune-write-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise TrackerError(f"cannot write in {where}: {e.strerror or e}") from None


class Trackers:
    """The run's trackers, each dropped with one line at its first failure."""

    def __init__(self, names: list[str], *, out: Path, project: str, directory, log):
        import importlib.util

        self.log, self.live = log, list[Trackio | MLflow]()
        for name in names:
            module = PACKAGES[name]
            if importlib.util.find_spec(module) is None:
                log(
                    f"gentune: --report-to {name}: {module} is not installed (pip install "
                    f"'gentune[track]'); training goes on, metrics.csv has every number"
                )
                continue
            self.live.append(KINDS[name](project, run_name(out), directory))

    def _each(self, what: str, call, after: str = "training goes on without it") -> None:
        for tracker in list(self.live):
            try:
                call(tracker)
            except Exception as e:  # noqa: BLE001  (a tracker's failure never stops training)
                self.live.remove(tracker)
                text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                self.log(
                    f"gentune: --report-to {tracker.name}: could not {what} ({text}); "
                    f"{after}, metrics.csv has every number"
                )

    def start(self, config: dict) -> None:
        def start(t) -> None:
            self.log(f"gentune: --report-to {t.name}: logging to {t.start(config)}")

        self._each("start", start)

    def write(self, row: dict) -> None:
        self._each("log", lambda t: t.log(row))

    def samples(self, rows: list[dict], step: int) -> None:
        self._each("log the samples", lambda t: t.samples(rows, step))

    def close(self) -> None:
        self._each("keep what it was sent", lambda t: t.finish(), after="the run is complete")
