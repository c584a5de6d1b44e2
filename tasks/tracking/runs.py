"""Opening, tagging and closing MLflow runs.

The flow opens one MLflow run per flow run and passes its :class:`TrackedRun` to every
tracking task; tasks log through :class:`mlflow.MlflowClient` with its id, because MLflow's
active run is per thread and Prefect runs tasks in worker threads. Flows open and close runs
through :mod:`tasks.tracking.lifecycle`, not with these tasks directly.
"""

from __future__ import annotations

from mlflow import MlflowClient

from tasks import faults
from tasks.retry import retrying_task
from tasks.tracking.owners import owner_tags
from tasks.tracking.secrets import without_secrets
from tasks.tracking.store import (
    TrackedRun,
    check_tracking_available,
    configure_client,
    prepare_store,
    resolve_tracking_uri,
)


def flow_run_tags(flow_name: str, **extra: str) -> dict[str, str]:
    """Tags that tie an MLflow run to the Prefect flow run that opens it.

    Args:
        flow_name: The flow's name.
        **extra: More tags to set with them.

    Returns:
        ``prefect.flow_run_id``, ``prefect.flow_run_name``, ``prefect.flow_name`` and ``extra``.
    """
    from prefect.runtime import flow_run

    return {
        "prefect.flow_run_id": str(flow_run.id or ""),
        "prefect.flow_run_name": str(flow_run.name or ""),
        "prefect.flow_name": flow_name,
        **extra,
    }


@retrying_task
def start_tracking_run(
    tracking_uri: str | None, experiment: str, run_name: str, tags: dict[str, str]
) -> TrackedRun:
    """Open the MLflow run of this flow run, tagged with the process that owns it.

    The owner tags (:func:`tasks.tracking.owners.owner_tags`) let a later flow tell a run whose
    process died (``kill -9``) from one that is still going.
    """
    uri = resolve_tracking_uri(tracking_uri)
    return _open_run(uri, prepare_store(uri, experiment), run_name, tags)


@retrying_task
def start_child_run(parent: TrackedRun, run_name: str, tags: dict[str, str]) -> TrackedRun:
    """Open an MLflow run nested under ``parent``, in the parent's experiment.

    The parent's flow prepared the store and the experiment, so this skips
    :func:`~tasks.tracking.store.prepare_store` and its file lock: Ray workers starting at once
    would otherwise open the store one after another.
    """
    configure_client()
    check_tracking_available(parent.tracking_uri)
    nested = {**tags, "mlflow.parentRunId": parent.run_id}
    return _open_run(parent.tracking_uri, parent.experiment_id, run_name, nested)


def _open_run(
    tracking_uri: str, experiment_id: str, run_name: str, tags: dict[str, str]
) -> TrackedRun:
    faults.inject("start-tracking")
    run = MlflowClient(tracking_uri=tracking_uri).create_run(
        experiment_id, run_name=run_name, tags=without_secrets({**tags, **owner_tags()})
    )
    return TrackedRun(
        tracking_uri=tracking_uri,
        experiment_id=experiment_id,
        run_id=run.info.run_id,
        started_ms=int(run.info.start_time),
    )


def close_run(run: TrackedRun, status: str, error: str | None = None) -> None:
    """Mark the MLflow run FINISHED, FAILED or KILLED (with the error, if any).

    A plain function as well as a task: a flow that is being terminated by a signal closes
    its run with it directly, without scheduling a task.
    """
    client = run.client()
    if error:
        client.set_tag(run.run_id, "error", error[:4000])
    client.set_terminated(run.run_id, status=status)


@retrying_task
def end_tracking_run(run: TrackedRun, status: str, error: str | None = None) -> None:
    """Close the MLflow run as FINISHED, FAILED or KILLED (with the error, if any)."""
    close_run(run, status, error)


@retrying_task
def set_run_tags(run: TrackedRun, tags: dict[str, str]) -> None:
    """Tag the run (names or values that look like secrets are dropped)."""
    client = run.client()
    for key, value in without_secrets(tags).items():
        client.set_tag(run.run_id, key, value)
