"""One training per workdir: a lock file that names its holder.

    with workdir_lock(workdir):      # WorkdirBusy if a live process holds it
        ...train...

The lock is `workdir/train.lock`, created atomically (O_CREAT | O_EXCL) with the holder's host,
pid and start time, and removed when the holder finishes. A second training on the same workdir
is refused with one line naming the holder. A lock left by a process that died (a SIGKILL, a
lost machine) is taken over when its host is this one and its pid is gone; a lock held on
another host cannot be checked from here, so it is refused too, with how to clear it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time

log = logging.getLogger(__name__)

LOCK_FILE = "train.lock"


class WorkdirBusy(RuntimeError):
    """Another training holds the workdir."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def _holder(path: str) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}  # half-written or unreadable: treated as stale below


def _create(path: str) -> bool:
    """Write our lock if none exists; False if one does."""
    try:
        handle = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    me = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time()}
    with os.fdopen(handle, "w") as f:
        json.dump(me, f)
    return True


@contextlib.contextmanager
def workdir_lock(workdir: str, enabled: bool = True):
    """Hold workdir's lock for the block (enabled=False: a no-op, for processes other than the
    one that holds it for a multi-process job). Raises WorkdirBusy naming the holder."""
    if not enabled:
        yield
        return
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, LOCK_FILE)
    while not _create(path):
        holder = _holder(path)
        host, pid = holder.get("host"), holder.get("pid")
        if host not in (None, socket.gethostname()):
            raise WorkdirBusy(
                f"workdir {workdir} is in use by pid {pid} on {host} ({path}); if that "
                "training is gone, delete the file"
            )
        if isinstance(pid, int) and _alive(pid):
            started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("started", 0)))
            raise WorkdirBusy(
                f"workdir {workdir} is in use by another training: pid {pid} on {host}, "
                f"started {started}"
            )
        log.warning("taking over the stale lock of pid %s (no such process): %s", pid, path)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    try:
        yield
    finally:
        if _holder(path).get("pid") == os.getpid():
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
