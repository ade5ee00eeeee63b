"""The one error policy: a user's mistake is a `GentuneError`, shown as one line
`gentune <command>: error: …` with exit code 2; anything else is a bug, shown with its traceback
and a line asking to report it (see `cli.main`)."""

from __future__ import annotations


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
