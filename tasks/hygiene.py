"""Crash hygiene: no MLflow run stays RUNNING after its flow is gone.

- A flow ended by an error closes its run FAILED; ended by SIGTERM or Ctrl-C, KILLED
  (:func:`close_or_remember`). If the store cannot be reached at that moment, the wanted
  status is written to ``$QMLOPS_STATE_DIR/pending-close`` (default ``./.qmlops``) and the
  next flow on this machine applies it.
- A flow killed with SIGKILL closes nothing. Every run is tagged with its owner process
  (host, pid, process start time), so the next flow start (:func:`prepare_tracking`) finds
  RUNNING runs whose owner is dead on this host, or whose Prefect flow run has reached a
  final state, and closes them as KILLED.
"""

from __future__ import annotations

import json
import os
import socket
import uuid
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.exceptions import TerminationSignal
from prefect.logging import get_run_logger

from tasks.policy import RETRIES, RETRY_DELAY_SECONDS, retry_if_transient
from tasks.tracking import (
    TrackedRun,
    close_run,
    mark_terminated,
    prepare_store,
    resolve_tracking_uri,
    running_runs,
)

STATE_DIR_ENV = "QMLOPS_STATE_DIR"
HOST_TAG, PID_TAG, START_TAG = "qmlops.host", "qmlops.pid", "qmlops.process_start"
FLOW_RUN_TAG = "prefect.flow_run_id"


def state_dir() -> Path:
    """Local bookkeeping folder: ``$QMLOPS_STATE_DIR`` or ``./.qmlops``."""
    return Path(os.environ.get(STATE_DIR_ENV) or Path.cwd() / ".qmlops")


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


def flow_run_final(flow_run_id: str) -> bool | None:
    """Whether a Prefect flow run is in a final state; ``None`` if it cannot be read."""
    from prefect.client.orchestration import get_client

    try:
        with get_client(sync_client=True) as client:
            state = client.read_flow_run(uuid.UUID(flow_run_id)).state
    except Exception:  # noqa: BLE001 - unknown run or other Prefect API: cannot tell
        return None
    return None if state is None else bool(state.is_final())


def _pending_folder() -> Path:
    return state_dir() / "pending-close"


def close_or_remember(run: TrackedRun, error: BaseException) -> str:
    """Close a failed flow's run: KILLED for a signal, else FAILED.

    If the store is unreachable, the status is saved locally for the next flow to apply.

    Returns:
        The status set or remembered.
    """
    status = "KILLED" if isinstance(error, TerminationSignal | KeyboardInterrupt) else "FAILED"
    message = f"{type(error).__name__}: {error}"
    try:
        close_run(run, status, message)
    except Exception:  # noqa: BLE001 - the store is down; remember instead
        folder = _pending_folder()
        folder.mkdir(parents=True, exist_ok=True)
        record = {"tracking_uri": run.tracking_uri, "status": status, "error": message}
        (folder / f"{run.run_id}.json").write_text(json.dumps(record))
    return status


def _apply_pending(tracking_uri: str, closed: dict[str, str]) -> None:
    folder = _pending_folder()
    if not folder.is_dir():
        return
    for path in sorted(folder.glob("*.json")):
        record = json.loads(path.read_text())
        if record["tracking_uri"] != tracking_uri:
            continue
        reason = f"closed after its flow failed: {record['error']}"
        if mark_terminated(tracking_uri, path.stem, record["status"], reason):
            closed[path.stem] = record["status"]
        path.unlink()


def close_orphaned_runs(tracking_uri: str, experiment: str) -> dict[str, str]:
    """Close runs of the experiment left RUNNING by flows that are gone.

    Returns:
        Run id to the status it was given.
    """
    closed: dict[str, str] = {}
    _apply_pending(tracking_uri, closed)
    for run_id, tags in running_runs(tracking_uri, experiment):
        alive = owner_alive(tags)
        if alive is None and tags.get(FLOW_RUN_TAG):
            final = flow_run_final(tags[FLOW_RUN_TAG])
            alive = None if final is None else not final
        if alive is False:
            owner = f"pid {tags.get(PID_TAG)} on {tags.get(HOST_TAG)}"
            if mark_terminated(tracking_uri, run_id, "KILLED", f"owner {owner} is gone"):
                closed[run_id] = "KILLED"
    return closed


@task(
    name="prepare-tracking",
    retries=RETRIES,
    retry_delay_seconds=RETRY_DELAY_SECONDS,
    retry_condition_fn=retry_if_transient,
    cache_policy=NO_CACHE,
)
def prepare_tracking(tracking_uri: str | None, experiment: str) -> dict[str, Any]:
    """Check the store answers, create it once, and close runs orphaned by dead flows.

    Runs first in a flow, so an unreachable tracking server fails the flow before any work.

    Returns:
        The tracking URI and the runs closed (id to status).
    """
    uri = resolve_tracking_uri(tracking_uri)
    prepare_store(uri, experiment)
    closed = close_orphaned_runs(uri, experiment)
    if closed:
        get_run_logger().warning("closed MLflow runs left open by dead flows: %s", closed)
    return {"tracking_uri": uri, "closed": closed}
