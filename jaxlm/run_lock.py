"""One writer per run directory: a lock file that pretraining and fine-tuning take for the length of the run,
so that a second run started on the same workdir stops at once, naming the holder, instead of interleaving its
metrics and checkpoints with the first one's. Readers (evaluate, predict, generate, convert to-hf) take none.

    WORKDIR/RUNNING.lock   {"host": ..., "pid": ..., "started": "2026-12-03T06:40:00Z"}

A lock left by a run that died (its host is this host and its pid is gone: SIGKILL, a crash) is taken over with
a warning, so a resume after a kill just works. Local files are created atomically (O_EXCL). On gs:// the
check and the create are two requests (etils.epath has no conditional create): two runs started within the
same moment can both pass, which is the rare case; the common one, a run started on a workdir another run is
still writing, is refused.
"""
from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import socket

from etils import epath

from jaxlm.paths import is_remote

log = logging.getLogger(__name__)

LOCK_FILE = "RUNNING.lock"


class WorkdirLockedError(RuntimeError):
    """Another run is writing to this workdir."""


def _holder() -> dict:
    started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {"host": socket.gethostname(), "pid": os.getpid(), "started": started}


def _is_dead(holder: dict) -> bool:
    """Whether the holder is a process of this host that no longer exists."""
    if holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
        return False
    try:
        os.kill(holder["pid"], 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def _read(path: epath.Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _create(path: epath.Path, holder: dict) -> bool:
    """Writes the lock if there is none; False if there is one."""
    data = json.dumps(holder)
    if is_remote(os.fspath(path)):
        if path.exists():
            return False
        path.write_text(data)
        return True
    try:
        fd = os.open(os.fspath(path), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        f.write(data)
    return True


def acquire(workdir: str) -> dict:
    """Takes the lock of `workdir` (which must exist) or raises WorkdirLockedError naming the holder."""
    path = epath.Path(workdir) / LOCK_FILE
    holder = _holder()
    if _create(path, holder):
        return holder
    current = _read(path)
    if _is_dead(current):
        log.warning("%s: taking over the lock of a run that is gone (%s)", path, current)
        path.unlink(missing_ok=True)
        if _create(path, holder):
            return holder
        current = _read(path)
    raise WorkdirLockedError(
        f"{workdir} is being written by another run (host {current.get('host')}, pid {current.get('pid')}, "
        f"started {current.get('started')}; {path}). Wait for it, use another --workdir, or, if that run is "
        "gone on another host, delete the lock file")


def release(workdir: str, holder: dict) -> None:
    path = epath.Path(workdir) / LOCK_FILE
    if _read(path) == holder:  # never remove another run's lock
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def workdir_lock(workdir: str, enabled: bool = True):
    """The lock for the duration of a `with` block (enabled on process 0 of a multi-process run only)."""
    if not enabled:
        yield
        return
    holder = acquire(workdir)
    try:
        yield
    finally:
        release(workdir, holder)
