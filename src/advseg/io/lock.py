"""One writer per run folder: a lock file holding the writer's host and PID.

``advseg train`` (also ``--resume``, the experiment matrix's cells and the demo's runs) and
``advseg synthesize train`` hold :class:`RunLock` on their run folder while they write it. A second
command on the same folder fails with one line naming the folder and the process that holds it.
The lock file is created with ``os.open(O_CREAT | O_EXCL)``, so of two processes starting at once
exactly one gets it. A lock left behind by a killed process (``kill -9``, power loss) is stale when
it names this host and a PID that is no longer running (``os.kill(pid, 0)``); it is taken over.
A lock from another host cannot be checked from here and is never taken over: delete the file
by hand when that run is known to be dead.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

from advseg.errors import InputError

LOCK_NAME = ".advseg.lock"
_HELD: set[str] = set()  # lock files this process holds (a PID equal to ours is then not stale)


def _read(path: Path) -> dict[str, Any] | None:
    """The lock's content; None when there is no lock. An unreadable lock reads as ``{}``."""
    for _ in range(2):
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except OSError:
            return {}
        try:
            data = json.loads(text)
            if isinstance(data, dict):
                return data
        except json.JSONDecodeError:
            pass
        time.sleep(0.05)  # being written by its creator right now: read once more
    return {}


def _pid_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def _is_stale(path: Path, info: dict[str, Any]) -> bool:
    pid, host = info.get("pid"), info.get("host")
    if not isinstance(pid, int) or host != socket.gethostname():
        return False
    if pid == os.getpid():
        return str(path) not in _HELD  # our PID but not our lock: a dead process's PID reused by us
    return not _pid_running(pid)


def _describe(info: dict[str, Any]) -> str:
    if not info:
        return "its lock file cannot be read"
    since = info.get("started", "?")
    return f"PID {info.get('pid')} on {info.get('host')}, since {since}"


def check_unlocked(folder: str | Path) -> None:
    """Raise :class:`InputError` if a live process holds ``folder``'s lock (writes nothing)."""
    path = Path(folder) / LOCK_NAME
    if str(path) in _HELD:
        return  # this process's own lock
    info = _read(path)
    if info is None or _is_stale(path, info):
        return
    raise InputError(folder, f"in use by another advseg run ({_describe(info)}); wait for it to "
                             f"finish or stop it (a dead run's lock on another host: delete {LOCK_NAME})")


class RunLock:
    """Context manager: hold ``folder/.advseg.lock`` (the folder must exist)."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.held = False

    def acquire(self) -> RunLock:
        content = json.dumps({
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "command": " ".join(sys.argv),
        })
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                info = _read(self.path)
                if info is None:
                    continue  # released in between: try again
                if not _is_stale(self.path, info):
                    raise InputError(self.folder, f"in use by another advseg run ({_describe(info)}); wait "
                                                  "for it to finish or stop it") from None
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.path)  # a dead process's lock: take it over
                continue
            except OSError as exc:
                raise InputError(self.folder, f"cannot create the run lock ({exc.strerror or exc})") from None
            try:
                os.write(fd, content.encode())
            except OSError as exc:
                os.close(fd)
                os.unlink(self.path)
                if exc.errno in (errno.EFBIG, errno.ENOSPC):
                    raise InputError(self.folder, f"cannot write the run lock ({exc.strerror})") from None
                raise
            os.close(fd)
            self.held = True
            _HELD.add(str(self.path))
            return self
        raise InputError(self.folder, "could not take the run lock (other processes keep racing for it)")

    def release(self) -> None:
        """Remove the lock file if this object holds it (safe to call twice)."""
        if not self.held:
            return
        self.held = False
        _HELD.discard(str(self.path))
        info = _read(self.path)
        if info is not None and info.get("pid") == os.getpid():
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
