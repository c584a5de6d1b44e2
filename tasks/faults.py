"""Fault injection for reliability tests and drills: real failures at named points.

Faults are switched on by the environment variable ``QMLOPS_FAULTS``, a comma-separated list
of ``<action>:<point>[:<iteration>]`` entries; nothing happens when it is unset.

- ``fail``: raise :class:`InjectedTransientFault` (a transient error, so Prefect retries the
  task) the first time the point is reached in this process.
- ``hang``: write the file named by ``QMLOPS_FAULT_MARKER`` (if set) and sleep until the
  process is signalled, so a test can kill it at a known point.
- ``pause``: write the marker file and wait until someone deletes it, then go on (a test
  changes the world meanwhile, e.g. stops the tracking server).

Code marks a point by calling :func:`inject` there. Points: ``train`` (after the given
training iteration is recorded), ``log-metrics`` (after the first batch of metrics is
written), ``start-tracking`` (before the MLflow run opens).
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

FAULTS_ENV = "QMLOPS_FAULTS"
MARKER_ENV = "QMLOPS_FAULT_MARKER"

_fired: set[str] = set()
_lock = threading.Lock()


class InjectedTransientFault(RuntimeError):
    """A deliberately injected transient failure (retried like any transient error)."""


def _entries() -> list[tuple[str, str, int | None]]:
    entries = []
    for raw in os.environ.get(FAULTS_ENV, "").split(","):
        parts = raw.strip().split(":")
        if len(parts) < 2 or not parts[0]:
            continue
        iteration = int(parts[2]) if len(parts) > 2 and parts[2] else None
        entries.append((parts[0], parts[1], iteration))
    return entries


def inject(point: str, iteration: int | None = None) -> None:
    """Trigger the faults configured for ``point`` (and ``iteration``), if any.

    Args:
        point: The named point reached.
        iteration: The training iteration, for the ``train`` point.

    Raises:
        InjectedTransientFault: For a ``fail`` fault, once per process.
    """
    for action, name, at in _entries():
        if name != point or (at is not None and at != iteration):
            continue
        entry = f"{action}:{name}:{at}"
        if action == "fail":
            with _lock:
                if entry in _fired:
                    continue
                _fired.add(entry)
            raise InjectedTransientFault(f"injected transient fault at {point} ({entry})")
        if action in ("hang", "pause"):
            marker = os.environ.get(MARKER_ENV)
            if marker:
                Path(marker).write_text(str(os.getpid()))
            # hang: until a signal ends the process or a timeout interrupts it.
            while action == "hang" or (marker and Path(marker).exists()):
                time.sleep(0.2)


def reset() -> None:
    """Re-arm ``fail`` faults that already fired in this process (for tests)."""
    with _lock:
        _fired.clear()
