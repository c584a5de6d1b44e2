"""The tracking store: where it is, whether it answers, and its one-time set-up under a lock.

Default store: a SQLite database under ``./mlruns`` of the working directory, with artifacts
beside it; ``MLFLOW_TRACKING_URI`` or ``TrackingConfig.tracking_uri`` override it. Nothing is
configured at import time. A fresh SQLite store is created under a file lock (one migration,
however many processes start at once); a tracking server that does not answer fails the flow
within seconds (:func:`check_tracking_available`, bounded HTTP retries).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Experiment

DEFAULT_STORE_DIR = "mlruns"
# Bounded client retries, so an unreachable server fails a flow in seconds, not minutes
# (MLflow's defaults retry 7 times with exponential backoff and wait 120 s per request).
HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}
AVAILABILITY_TIMEOUT_S = 5.0


class TrackingUnavailableError(RuntimeError):
    """The MLflow tracking server or store cannot be reached (transient: retried)."""


@dataclass(frozen=True)
class TrackedRun:
    """Handle of the MLflow run of one flow run."""

    tracking_uri: str
    experiment_id: str
    run_id: str
    started_ms: int = 0

    def client(self) -> MlflowClient:
        """A client bound to this run's tracking URI."""
        return MlflowClient(tracking_uri=self.tracking_uri)


def default_tracking_uri(base_dir: str | Path | None = None) -> str:
    """SQLite store under ``<base_dir>/mlruns`` (``base_dir``: the working directory)."""
    root = Path(base_dir or Path.cwd()).resolve() / DEFAULT_STORE_DIR
    return f"sqlite:///{root / 'mlflow.db'}"


def resolve_tracking_uri(configured: str | None = None) -> str:
    """Configured URI, else ``$MLFLOW_TRACKING_URI``, else :func:`default_tracking_uri`."""
    return configured or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri()


def _artifact_root(tracking_uri: str) -> str | None:
    if tracking_uri.startswith("sqlite:///"):
        return (Path(tracking_uri.removeprefix("sqlite:///")).parent / "artifacts").as_uri()
    return None


def configure_client() -> None:
    """Bound MLflow's HTTP retries and timeouts, unless the user set them."""
    for name, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(name, value)


def check_tracking_available(tracking_uri: str, timeout_s: float = AVAILABILITY_TIMEOUT_S) -> None:
    """Fail fast with a clear message if a tracking server does not answer its health check.

    Raises:
        TrackingUnavailableError: If an ``http(s)`` server is unreachable or unhealthy.
    """
    if not tracking_uri.startswith(("http://", "https://")):
        return
    url = tracking_uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            if response.status == 200:
                return
            problem = f"HTTP {response.status}"
    except (urllib.error.URLError, OSError) as error:
        problem = str(getattr(error, "reason", error))
    raise TrackingUnavailableError(
        f"MLflow tracking server {_public(tracking_uri)} is unavailable ({problem}); start it "
        "or point MLFLOW_TRACKING_URI / --tracking-uri at a reachable store"
    )


def _public(uri: str) -> str:
    # Never echo credentials embedded in a URI.
    return re.sub(r"//[^/@]*@", "//***@", uri)


@contextlib.contextmanager
def _store_lock(tracking_uri: str) -> Iterator[None]:
    """Exclusive file lock beside a SQLite store (nothing for other stores)."""
    if not tracking_uri.startswith("sqlite:///"):
        yield
        return
    database = Path(tracking_uri.removeprefix("sqlite:///"))
    database.parent.mkdir(parents=True, exist_ok=True)
    with open(database.with_name(database.name + ".lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def prepare_store(tracking_uri: str, experiment: str) -> str:
    """Create the store (schema migration runs once, here) and the experiment.

    Processes that start at once on a fresh SQLite store queue on a file lock, so exactly
    one of them creates the schema and the experiment.

    Returns:
        The experiment id.
    """
    configure_client()
    check_tracking_available(tracking_uri)
    with _store_lock(tracking_uri):
        return _experiment_id(tracking_uri, experiment)


EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING_KIND = "custom_model_development"


def mark_model_training(client: MlflowClient, experiment: Experiment) -> None:
    """Tag an experiment as model training unless it has a kind already.

    MLflow 3's UI reads the kind to choose its view: without it, it opens experiments in its
    GenAI (traces) view, and the runs, charts and registered models hide behind a toggle.
    """
    if EXPERIMENT_KIND_TAG not in experiment.tags:
        client.set_experiment_tag(
            experiment.experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING_KIND
        )


def _experiment_id(tracking_uri: str, experiment: str) -> str:
    client = MlflowClient(tracking_uri=tracking_uri)
    existing = client.get_experiment_by_name(experiment)
    if existing is not None:
        mark_model_training(client, existing)
        return str(existing.experiment_id)
    artifact_root = _artifact_root(tracking_uri)
    location = None if artifact_root is None else f"{artifact_root}/{experiment}"
    try:
        return str(
            client.create_experiment(
                experiment,
                artifact_location=location,
                tags={EXPERIMENT_KIND_TAG: MODEL_TRAINING_KIND},
            )
        )
    except mlflow.exceptions.MlflowException:
        # Another process created it first.
        found = client.get_experiment_by_name(experiment)
        if found is None:
            raise
        return str(found.experiment_id)
