"""Is the process holding a lock still alive? Answered only for processes we can see.

A lock records the holder's machine (:func:`machine`), PID and start time
(:func:`started`). A holder on the same machine whose PID is gone, or now names a process
started at another time, is dead (:func:`process_gone`); one on another machine is never
judged by local PIDs and holds its lease until it expires.
"""

from __future__ import annotations

import os
import socket


def _read(path: str) -> str:
    try:
        with open(path) as file:
            return file.read().strip()
    except OSError:
        return ""


def machine() -> str:
    """Who can see whose processes: the host name, its boot and the PID namespace. Two
    containers sharing a host name but not a PID namespace are different machines."""
    boot = _read("/proc/sys/kernel/random/boot_id")[:8] or "-"
    try:
        namespace = str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        namespace = "-"
    return f"{socket.gethostname()}|{boot}|{namespace}"


def started(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks since boot), or ``None`` if unknown."""
    stat = _read(f"/proc/{pid}/stat")
    if not stat:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def process_gone(pid: int, started_at: int | None) -> bool:
    """True when ``pid`` no longer runs, or now names another process than the one that
    started at ``started_at`` (``None``: unknown, so only a missing PID counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass
    now = started(pid)
    return started_at is not None and now is not None and now != started_at
