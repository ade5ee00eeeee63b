"""One writer per output directory. Every command that writes a run or an output directory
(`train`, `distill`, `export`, `explain`, `evaluate` and `generate` with `--out`) holds an OS
file lock (`flock`) on a file in it for as long as it writes, with a record of who holds it: process id,
host, start time and command. A second writer is refused with one line naming that process;
the OS releases the lock of a process that dies, so a lock left by a killed process is simply
taken over (with a note naming the dead holder). Readers need no lock: a run is complete only
once its manifest is written, last, and an export appears by one rename."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from gentune.errors import RunError

LOCK_NAME = ".gentune.lock"


def _holder(fd: int) -> dict:
    try:
        raw = os.pread(fd, 4096, 0)
        return json.loads(raw) if raw.strip() else {}
    except (OSError, ValueError):
        return {}


def alive(pid: int) -> bool:
    """Whether process `pid` exists on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def writer(directory: str | Path) -> dict | None:
    """The record of the process writing `directory` now ({} if it left none), or None where
    no process holds its lock (readers use it: a run being trained is not interrupted)."""
    path = Path(directory) / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _holder(fd)
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def describe(holder: dict) -> str:
    """'process 1234 on host h, started 2026-12-06 18:40:02 (gentune train ...)'."""
    if not holder:
        return "a process that left no record"
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("started", 0)))
    command = holder.get("command", "")
    return f"process {holder.get('pid')} on host {holder.get('host')}, started {started}" + (
        f" ({command})" if command else ""
    )


class DirLock:
    """The lock on one directory (or, with `path`, on a lock file beside what is written)."""

    def __init__(self, directory: str | Path, flag: str = "--out", *, path: Path | None = None):
        self.directory = Path(directory)
        self.flag = flag
        self.path = path or self.directory / LOCK_NAME
        self.fd: int | None = None
        self.created = False

    def acquire(self, log=None) -> DirLock:
        """Take the lock or raise RunError naming its holder; a dead holder's is taken over."""
        if self.path.parent.exists() and not self.path.parent.is_dir():
            raise RunError(f"{self.flag} {self.path.parent}: is a file; give a directory")
        self.created = not self.path.parent.exists()  # removed again if left empty
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise RunError(
                f"{self.flag} {self.directory}: another gentune command is writing it "
                f"({describe(holder)}); wait for it to finish, stop it, or choose another "
                f"{self.flag}"
            ) from None
        previous = _holder(fd)
        if previous:  # a record the last holder never cleared: it did not end normally
            gone = previous.get("host") == socket.gethostname() and not alive(
                int(previous.get("pid", 0))
            )
            (log or _note)(
                f"gentune: note: taking over the lock of {self.flag} {self.directory} left by "
                f"{describe(previous)}{', which is no longer running' if gone else ''}"
            )
        record = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.time(),
            "command": " ".join(["gentune", *sys.argv[1:]])[:500],
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode(), 0)
        os.fsync(fd)
        self.fd = fd
        return self

    def release(self) -> None:
        """Clear the record and let go (the file stays: removing it would race a new writer)."""
        if self.fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(self.fd, 0)
            # a command refused before it wrote anything leaves nothing behind
            if self.created and [p.name for p in self.path.parent.iterdir()] == [LOCK_NAME]:
                self.path.unlink()
                self.path.parent.rmdir()
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)
        self.fd = None


def _note(line: str) -> None:
    print(line, file=sys.stderr)


@contextlib.contextmanager
def locked(
    directory: str | Path, flag: str = "--out", *, path: Path | None = None, enabled: bool = True
) -> Iterator[DirLock | None]:
    """Hold the directory's lock for the block (nothing where `enabled` is False: a process
    that is not the writing rank)."""
    if not enabled:
        yield None
        return
    lock = DirLock(directory, flag, path=path).acquire()
    try:
        yield lock
    finally:
        lock.release()


def is_main_rank() -> bool:
    """Whether this process writes: rank 0 of a launched job, or a lone process."""
    return os.environ.get("RANK", "0") == "0"
