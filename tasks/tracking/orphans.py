"""Runs orphaned by dead flows: found and closed when the next flow starts.

- A run whose flow could not close it (the store was unreachable) has its wanted status in
  the pending-close folder (:mod:`tasks.tracking.lifecycle`); it is applied first.
- A flow killed with SIGKILL closes nothing. Every run is tagged with its owner process
  (:mod:`tasks.tracking.owners`), so the next flow start (:func:`prepare_tracking`) finds
  RUNNING runs whose owner is dead on this host, or whose Prefect flow run has reached a
  final state, and closes them as KILLED.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from mlflow import MlflowClient
from prefect.logging import get_run_logger

from tasks.retry import retrying_task
from tasks.tracking.lifecycle import pending_close_folder
from tasks.tracking.owners import HOST_TAG, PID_TAG, owner_alive
from tasks.tracking.store import prepare_store, resolve_tracking_uri

FLOW_RUN_TAG = "prefect.flow_run_id"


def running_runs(tracking_uri: str, experiment: str) -> list[tuple[str, dict[str, str]]]:
    """``(run_id, tags)`` of the experiment's runs that are still RUNNING."""
    client = MlflowClient(tracking_uri=tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return []
    runs = client.search_runs(
        [found.experiment_id], filter_string="attributes.status = 'RUNNING'", max_results=1000
    )
    return [(r.info.run_id, dict(r.data.tags)) for r in runs]


def mark_terminated(tracking_uri: str, run_id: str, status: str, reason: str) -> bool:
    """Close a run left RUNNING by a dead flow; ``False`` if it was closed meanwhile."""
    client = MlflowClient(tracking_uri=tracking_uri)
    if client.get_run(run_id).info.status != "RUNNING":
        return False
    client.set_tag(run_id, "qmlops.closed_by", reason[:4000])
    client.set_terminated(run_id, status=status)
    return True


def flow_run_final(flow_run_id: str) -> bool | None:
    """Whether a Prefect flow run is in a final state; ``None`` if it cannot be read."""
    from prefect.client.orchestration import get_client

    try:
        with get_client(sync_client=True) as client:
            state = client.read_flow_run(uuid.UUID(flow_run_id)).state
    except Exception:  # noqa: BLE001 - unknown run or other Prefect API: cannot tell
        return None
    return None if state is None else bool(state.is_final())


def _apply_pending(tracking_uri: str, closed: dict[str, str]) -> None:
    folder = pending_close_folder()
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


@retrying_task
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
