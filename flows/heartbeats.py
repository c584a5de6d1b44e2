"""No flow-run heartbeats for flows run in the foreground (the ``qmlops`` CLI, ``make demo``).

Prefect 3.9 emits flow-run heartbeats from a thread that the engine joins when the run ends.
That thread sleeps in one-second steps, so every run ends up to a second late: measured here, a
flow with one trivial task took 1.07 s with heartbeats and 0.08 s without. Heartbeats serve one
purpose, zombie detection of runs that a worker or runner executes (through an automation
watching for missing heartbeats). A foreground run needs none: its own process reports a
signal (the run ends Crashed, its MLflow run KILLED), and a killed process leaves nothing
running behind. Deployment runs, executed by workers, keep Prefect's default. An explicit
``PREFECT_FLOWS_HEARTBEAT_FREQUENCY`` is always respected.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

_EXPLICIT = ("PREFECT_FLOWS_HEARTBEAT_FREQUENCY", "PREFECT_RUNNER_HEARTBEAT_FREQUENCY")


@contextlib.contextmanager
def without_flow_heartbeats() -> Iterator[None]:
    """Run the flows called inside this block without flow-run heartbeats (unless configured)."""
    if any(name in os.environ for name in _EXPLICIT):
        yield
        return
    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        yield
