"""How runs are written: configuration params, batched metrics, timestamps, PNG artifacts.

Metrics carry the run's start time as timestamp, so a retried logging task rewrites identical
rows, which the store deduplicates.
"""

from __future__ import annotations

import platform
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Metric, Param

from tasks import faults
from tasks.tracking.secrets import without_secrets
from tasks.tracking.store import TrackedRun

TRACKED_PACKAGES = (
    "qmlops",
    "qiskit",
    "qiskit-aer",
    "qiskit-machine-learning",
    "scikit-learn",
    "numpy",
    "scipy",
    "pandas",
    "mlflow",
    "prefect",
)
METRIC_BATCH = 900  # MLflow's log_batch accepts at most 1000 entries


def package_versions() -> dict[str, str]:
    """Installed versions of the packages that determine a result."""
    versions = {"python": platform.python_version()}
    for package in TRACKED_PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not-installed"
    return versions


def _flatten(prefix: str, values: dict[str, Any]) -> dict[str, str]:
    return {f"{prefix}.{key}": "" if value is None else str(value) for key, value in values.items()}


def config_params(configs: dict[str, dict[str, Any]], extra: dict[str, str]) -> list[Param]:
    """Flattened configuration sections, ``extra`` and package versions, secrets dropped."""
    params: dict[str, str] = {}
    for section, values in configs.items():
        params.update(_flatten(section, values))
    params.update(extra)
    params.update(_flatten("version", package_versions()))
    return [Param(key, value[:6000]) for key, value in without_secrets(params).items()]


def log_metrics(run: TrackedRun, metrics: list[Metric]) -> None:
    """Log metrics in batches the store accepts."""
    client = run.client()
    for start in range(0, len(metrics), METRIC_BATCH):
        client.log_batch(run.run_id, metrics=metrics[start : start + METRIC_BATCH])
        faults.inject("log-metrics")


def run_timestamp(run: TrackedRun) -> int:
    """Timestamp of the run's metrics: its start time, not "now".

    A retried task then logs rows identical to the ones an interrupted attempt already wrote,
    and the store keeps each (key, step) once.
    """
    return run.started_ms or int(time.time() * 1000)


def log_png(client: MlflowClient, run_id: str, image: bytes, name: str) -> None:
    """Log a PNG image under the run's ``plots`` folder."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / name
        path.write_bytes(image)
        client.log_artifact(run_id, str(path), artifact_path="plots")
