"""The one error policy: a user's mistake is a `GentuneError`, shown as one line
`gentune <command>: error: …` with exit code 2; anything else is a bug, shown with its traceback
and a line asking to report it (see `cli.main`)."""

from __future__ import annotations

import errno
import os
import re


class GentuneError(Exception):
    """A mistake the user can fix; the message names the file, row, field or flag and what to
    do. Never a bug of gentune's."""


class UsageError(GentuneError, ValueError):
    """A flag or argument that cannot be used as given."""


class DataError(GentuneError, ValueError):
    """Bad user data; the message names file, row and field and what to do."""


class ConfigError(GentuneError, ValueError):
    """Invalid settings; the message lists every problem."""

    def __init__(self, message: str, problems: list[str] | None = None):
        super().__init__(message)
        self.problems = problems or [message]


class ModelError(GentuneError, RuntimeError):
    """A model that cannot be found or loaded; the message says what to do."""


class RunError(GentuneError, RuntimeError):
    """A run directory that cannot be used as asked (interrupted, damaged, or another run's)."""


class TrainingError(GentuneError, RuntimeError):
    """Training stopped; the message says why and what to do."""


class TeacherError(GentuneError, RuntimeError):
    """A distillation teacher that cannot be used (unreachable, refusing every request)."""


# ---- files gentune wrote itself: damaged ones are named, never a traceback ---------------------
def read_json_object(path, what: str, error: type[GentuneError] = RunError) -> dict:
    """A JSON object gentune saved (manifest, template, settings); a damaged file raises
    `error` naming it and what it was."""
    import json
    from pathlib import Path

    try:
        data = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise error(
            f"{path}: cannot read the {what} ({e}); the run directory is damaged: "
            "train it again (--overwrite) or restore the file"
        ) from None
    if not isinstance(data, dict):
        raise error(f"{path}: the {what} is not a JSON object; the run directory is damaged")
    return data


def check_keys(path, data: dict, required, known) -> None:
    """Missing or unknown keys in a saved JSON object name the file."""
    missing = [k for k in required if k not in data]
    unknown = sorted(set(data) - set(known))
    if missing or unknown:
        problems = ([f"missing keys {', '.join(missing)}"] if missing else []) + (
            [f"unknown keys {', '.join(unknown)}"] if unknown else []
        )
        raise RunError(
            f"{path}: {'; '.join(problems)} (damaged, or written by another gentune "
            "version): train the run again (--overwrite)"
        )


# a write that failed for lack of room or rights: a full disk, a quota, a file-size limit, a
# read-only or forbidden directory
DISK_ERRNOS = {
    errno.ENOSPC,
    errno.EDQUOT,
    errno.EFBIG,
    errno.EROFS,
    errno.EACCES,
    errno.EPERM,
}


def disk_error(e: BaseException) -> OSError | None:
    """The OSError of a failed write inside `e` (its causes, its arguments, a distributed
    checkpoint's per-rank failures), or None."""
    seen: set[int] = set()
    stack: list[object] = [e]
    while stack:
        x = stack.pop()
        if not isinstance(x, BaseException) or id(x) in seen:
            continue
        seen.add(id(x))
        if isinstance(x, OSError) and x.errno in DISK_ERRNOS:
            return x
        if (found := os_error(x)) is not None and found.errno in DISK_ERRNOS:
            return found
        stack += [x.__cause__, x.__context__, getattr(x, "exception", None), *x.args]
        failures = getattr(x, "failures", None)  # torch's CheckpointException: rank -> (e, tb)
        if isinstance(failures, dict):
            for v in failures.values():
                stack += list(v) if isinstance(v, tuple) else [v]
    return None


def os_error(e: BaseException, filename: str | None = None) -> OSError | None:
    """The OSError inside safetensors' writer's error ("I/O error: No space left on device
    (os error 28)"), which is not an OSError itself; None for any other error."""
    if type(e).__name__ != "SafetensorError":
        return None
    found = re.search(r"\(os error (\d+)\)", str(e))
    if found is None:
        return None
    code = int(found.group(1))
    return OSError(code, os.strerror(code), filename)


def write_failed(disk: OSError, what: str, where, after: str) -> RunError:
    """One line for a failed write: the path, what was being written, why, what to do."""
    reason = {
        errno.ENOSPC: "no space left on the disk",
        errno.EDQUOT: "the disk quota is used up",
        errno.EFBIG: "the file is over the file-size limit",
        errno.EROFS: "the filesystem is read-only",
    }.get(disk.errno or 0, disk.strerror or str(disk))
    return RunError(f"{disk.filename or where}: cannot write {what}: {reason}; {after}")
