"""The lifecycle of an MLflow run: opened on entry, closed on exit, whatever ends the block.

``with tracked_run(...) as run:`` (or :func:`tracked_child_run`) ends the run FINISHED when
the block completes, FAILED when it raises, and KILLED when a signal ends it (SIGTERM, which
Prefect raises as ``TerminationSignal``, or Ctrl-C). If the store cannot be reached at that
moment, the wanted status is written to ``$QMLOPS_STATE_DIR/pending-close`` (default
``./.qmlops``) and the next flow on this machine applies it
(:func:`tasks.tracking.orphans.close_orphaned_runs`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from prefect.exceptions import TerminationSignal

from tasks.tracking.runs import close_run, end_tracking_run, start_child_run, start_tracking_run
from tasks.tracking.store import TrackedRun

STATE_DIR_ENV = "QMLOPS_STATE_DIR"


def state_dir() -> Path:
    """Local bookkeeping folder: ``$QMLOPS_STATE_DIR`` or ``./.qmlops``."""
    return Path(os.environ.get(STATE_DIR_ENV) or Path.cwd() / ".qmlops")


def pending_close_folder() -> Path:
    """Where the statuses of runs that could not be closed wait for the next flow."""
    return state_dir() / "pending-close"


@contextmanager
def tracked_run(
    tracking_uri: str | None, experiment: str, run_name: str, tags: dict[str, str]
) -> Iterator[TrackedRun]:
    """Open the MLflow run of this flow run for the block, and close it when the block ends.

    Args:
        tracking_uri: The store (``None``: :func:`~tasks.tracking.store.resolve_tracking_uri`).
        experiment: The experiment's name (created if missing).
        run_name: The run's name.
        tags: Tags of the run (:func:`~tasks.tracking.runs.flow_run_tags`, typically).

    Yields:
        The open run.
    """
    run = start_tracking_run(tracking_uri, experiment, run_name=run_name, tags=tags)
    with _closed_on_exit(run):
        yield run


@contextmanager
def tracked_child_run(
    parent: TrackedRun, run_name: str, tags: dict[str, str]
) -> Iterator[TrackedRun]:
    """Open an MLflow run nested under ``parent`` for the block, and close it when it ends.

    Args:
        parent: The run to nest under (its experiment and store are used).
        run_name: The run's name.
        tags: Tags of the run.

    Yields:
        The open run.
    """
    run = start_child_run(parent, run_name=run_name, tags=tags)
    with _closed_on_exit(run):
        yield run


@contextmanager
def _closed_on_exit(run: TrackedRun) -> Iterator[None]:
    try:
        yield
        end_tracking_run(run, "FINISHED")
    except BaseException as error:
        close_or_remember(run, error)
        raise


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
        folder = pending_close_folder()
        folder.mkdir(parents=True, exist_ok=True)
        record = {"tracking_uri": run.tracking_uri, "status": status, "error": message}
        (folder / f"{run.run_id}.json").write_text(json.dumps(record))
    return status
