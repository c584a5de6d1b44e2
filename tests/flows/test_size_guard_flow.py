"""The train flow refuses an oversized job before any simulator call or MLflow run."""

from __future__ import annotations

from collections import Counter

import pytest
from mlflow import MlflowClient
from prefect_runs import task_run_counts

import qmlops.circuits
from flows.train import train
from qmlops.config import CircuitConfig, DatasetConfig, TrackingConfig, TrainingConfig
from qmlops.errors import SizeLimitError

pytestmark = pytest.mark.usefixtures("prefect_harness")


def test_an_oversized_training_is_refused_before_simulating_or_tracking(
    mlflow_uri: str, monkeypatch: pytest.MonkeyPatch, simulator_calls: Counter[str]
) -> None:
    # Given a default memory limit (half the machine) of 1 KiB; this 2-qubit job needs ~2 KiB
    monkeypatch.setattr(qmlops.circuits, "default_memory_limit_bytes", lambda: 1024)

    # When a small training runs, then the flow fails with the size guard's error
    state = train(
        dataset=DatasetConfig(name="moons", n_samples=40),
        circuit=CircuitConfig(n_qubits=2, ansatz_reps=1),
        training=TrainingConfig(maxiter=2, batch_size=None),
        tracking=TrackingConfig(register_model=False),
        return_state=True,
    )
    assert state.is_failed()
    with pytest.raises(SizeLimitError, match="over the limit"):
        state.result()

    # And nothing was simulated, the check ran once, no training ran and no MLflow run opened
    assert sum(simulator_calls.values()) == 0
    client = MlflowClient(mlflow_uri)
    experiment = client.get_experiment_by_name("qmlops")
    assert experiment is None or not client.search_runs([experiment.experiment_id])
    runs = task_run_counts(str(state.state_details.flow_run_id))
    assert "train-classifier" not in runs
    assert runs["check-training-size"] == 1
