"""Which process owns an MLflow run, and whether that process still runs.

Every run is tagged with its owner process (host, pid, process start time), so a later flow
can tell a run whose process died (``kill -9``) from one that is still going.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

HOST_TAG, PID_TAG, START_TAG = "qmlops.host", "qmlops.pid", "qmlops.process_start"


def process_start(pid: int) -> str:
    """When a process started (clock ticks since boot; ``""`` where /proc is missing).

    With the pid it identifies a process: a pid reused by a later process gets another
    start time.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    # The command name (field 2) may contain spaces; fields after its ')' are fixed.
    return stat.rsplit(")", 1)[1].split()[19]


def owner_tags() -> dict[str, str]:
    """Tags naming the process that owns a run."""
    pid = os.getpid()
    return {HOST_TAG: socket.gethostname(), PID_TAG: str(pid), START_TAG: process_start(pid)}


def owner_alive(tags: dict[str, str]) -> bool | None:
    """Whether a run's owner process still runs; ``None`` if that cannot be told from here."""
    if tags.get(HOST_TAG) != socket.gethostname() or not tags.get(PID_TAG, "").isdigit():
        return None
    pid = int(tags[PID_TAG])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    started = process_start(pid)
    recorded = tags.get(START_TAG, "")
    return not (started and recorded and started != recorded)
