"""`make serve` end to end: real Prefect and MLflow servers, a worker, the deployments.

The stack runs on free loopback ports with its state in a temporary folder. A run of
`train-nightly` is created through the REST API exactly as the UI's "Run" button does
(POST /deployments/{id}/create_flow_run with custom parameters) and the worker executes it.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from mlflow import MlflowClient
from serve_stack import Stack, deployment, process_alive, wait_for_run

from qmlops.data import load_builtin

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CUSTOM = {
    "dataset": {"name": "moons", "n_samples": 60},
    "circuit": {"n_qubits": 2, "ansatz_reps": 1},
    "training": {"maxiter": 3, "batch_size": None, "random_state": 7},
    "tracking": {"experiment": "e2e-nightly", "model_name": "e2e-moons"},
    "promotion": {"require_beat_baseline": False},
}


@pytest.fixture
def stack(served_stack: Stack) -> Stack:
    return served_stack


def _run_from_ui(stack: Stack, deployment_id: str, parameters: dict[str, Any]) -> tuple[int, Any]:
    # What the UI's Run form posts: custom parameters and a scheduled state for now.
    return stack.call(
        "POST",
        f"/deployments/{deployment_id}/create_flow_run",
        {"parameters": parameters, "state": {"type": "SCHEDULED"}},
    )


def test_serve_deploys_runs_from_the_ui_and_stops(stack: Stack, tmp_path: Path) -> None:
    # Given `make serve` (the session's stack; another test may have started it), run twice:
    # the second run starts nothing new
    first = stack.make("serve")
    assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-4000:]
    assert f"Prefect UI   {stack.api.removesuffix('/api')}" in first.stdout
    assert f"MLflow UI    {stack.mlflow_uri}" in first.stdout
    pids = stack.pids()
    assert set(pids) == {"prefect-server", "mlflow-server", "worker"}
    second = stack.make("serve")
    assert second.returncode == 0, second.stdout[-4000:] + second.stderr[-4000:]
    assert second.stdout.count("already running") == 3
    assert stack.pids() == pids

    # Then the nightly deployment has its cron schedule, upcoming runs and a typed form
    nightly = deployment(stack, "train", "train-nightly")
    assert [s["schedule"]["cron"] for s in nightly["schedules"]] == ["0 2 * * *"]
    assert nightly["enforce_parameter_schema"]
    training = nightly["parameter_openapi_schema"]["definitions"]["TrainingConfig"]["properties"]
    assert training["optimizer"]["enum"] == ["adam", "spsa", "cobyla", "lbfgs"]
    assert (training["maxiter"]["minimum"], training["maxiter"]["maximum"]) == (1, 10_000)
    assert training["maxiter"]["default"] == 150
    assert training["maxiter"]["description"]
    deadline = time.monotonic() + 120
    upcoming: list[Any] = []
    while not upcoming and time.monotonic() < deadline:
        _, upcoming = stack.call(
            "POST",
            "/flow_runs/filter",
            {
                "deployments": {"id": {"any_": [nightly["id"]]}},
                "flow_runs": {"state": {"type": {"any_": ["SCHEDULED"]}}},
            },
        )
        time.sleep(2)
    assert upcoming, stack.log("prefect-server")

    # And an out-of-range value is refused by the server before any run exists
    status, refusal = _run_from_ui(
        stack, nightly["id"], {**CUSTOM, "training": {**CUSTOM["training"], "maxiter": 0}}
    )
    assert status == 409
    assert "training.maxiter" in refusal["detail"]

    # When a run with custom parameters is created as the Run button does
    status, created = _run_from_ui(stack, nightly["id"], CUSTOM)
    assert status == 201, created
    run = wait_for_run(stack, created["id"])
    assert run["state"]["type"] == "COMPLETED", stack.log("worker")

    # Then the MLflow server holds its run, parameters, metrics and registered version
    client = MlflowClient(stack.mlflow_uri)
    experiment = client.get_experiment_by_name("e2e-nightly")
    assert experiment is not None
    [tracked] = client.search_runs(
        [experiment.experiment_id], f"tags.`prefect.flow_run_id` = '{created['id']}'"
    )
    assert tracked.info.status == "FINISHED"
    assert tracked.data.params["training.maxiter"] == "3"
    assert tracked.data.params["circuit.n_qubits"] == "2"
    assert tracked.data.params["dataset.name"] == "moons"
    assert 0.0 <= tracked.data.metrics["test_accuracy"] <= 1.0
    assert "svc_test_accuracy" in tracked.data.metrics
    assert tracked.data.tags["promotion.promote"] == "True"
    [version] = client.search_model_versions("name = 'e2e-moons'")
    assert version.run_id == tracked.info.run_id
    assert str(client.get_registered_model("e2e-moons").aliases["champion"]) == version.version

    # And score-batch scores a file with the champion on the worker, recorded in MLflow
    load_builtin("moons", n_samples=25).frame().to_csv(tmp_path / "batch.csv", index=False)
    scoring = {
        "input_path": str(tmp_path / "batch.csv"),
        "model_name": "e2e-moons",
        "output_path": str(tmp_path / "scored.csv"),
    }
    status, scoring_run = _run_from_ui(
        stack, deployment(stack, "score", "score-batch")["id"], {"scoring": scoring}
    )
    assert status == 201, scoring_run
    finished = wait_for_run(stack, scoring_run["id"])
    assert finished["state"]["type"] == "COMPLETED", stack.log("worker")
    scored = pd.read_csv(tmp_path / "scored.csv")
    assert len(scored) == 25
    assert {"prediction", "probability_0", "probability_1"} <= set(scored.columns)
    scoring_experiment = client.get_experiment_by_name("qmlops-scoring")
    assert scoring_experiment is not None
    [score_run] = client.search_runs(
        [scoring_experiment.experiment_id],
        f"tags.`prefect.flow_run_id` = '{scoring_run['id']}'",
    )
    assert score_run.data.params["model_version"] == version.version

    # Finally `make stop` stops exactly what serve started
    stopped = stack.make("stop")
    assert stopped.returncode == 0, stopped.stderr
    assert not any(process_alive(pid) for pid in pids.values())
    assert not list(stack.state_dir.glob("*.pid"))
