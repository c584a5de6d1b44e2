"""`make serve` end to end: real Prefect and MLflow servers, a worker, the deployments.

The stack runs on free loopback ports with its state in a temporary folder. A run of
`train-nightly` is created through the REST API exactly as the UI's "Run" button does
(POST /deployments/{id}/create_flow_run with custom parameters) and the worker executes it.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from mlflow import MlflowClient
from services import LOOPBACK, free_port

from qmlops.data import load_builtin

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PROJECT_DIR = Path(__file__).resolve().parent.parent
RUN_TIMEOUT_S = 600.0
API_RETRY_DELAYS_S = (0.5, 1.0, 2.0, 4.0)
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
CUSTOM = {
    "dataset": {"name": "moons", "n_samples": 60},
    "circuit": {"n_qubits": 2, "ansatz_reps": 1},
    "training": {"maxiter": 3, "batch_size": None, "random_state": 7},
    "tracking": {"experiment": "e2e-nightly", "model_name": "e2e-moons"},
    "promotion": {"require_beat_baseline": False},
}


@dataclass(frozen=True)
class Stack:
    env: dict[str, str]
    state_dir: Path
    api: str
    mlflow_uri: str

    def make(self, target: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["make", "-C", str(PROJECT_DIR), target],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )

    def pids(self) -> dict[str, int]:
        return {
            path.stem: int(json.loads(path.read_text())["pid"])
            for path in self.state_dir.glob("*.pid")
        }

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        # 503 is the server's "retry this": on SQLite it answers so when another writer (a
        # service such as the scheduler) holds the database, having rolled the request back.
        # Prefect's own client retries it the same way; the raw calls here must too.
        status, content = self._call_once(method, path, body)
        for delay in API_RETRY_DELAYS_S:
            if status != HTTPStatus.SERVICE_UNAVAILABLE:
                break
            time.sleep(delay)
            status, content = self._call_once(method, path, body)
        return status, content

    def _call_once(self, method: str, path: str, body: Any) -> tuple[int, Any]:
        request = urllib.request.Request(
            self.api + path,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
            method=method,
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read() or b"null")

    def log(self, name: str) -> str:
        path = self.state_dir / f"{name}.log"
        return path.read_text(errors="replace")[-6000:] if path.exists() else ""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("serve")
    prefect_port, mlflow_port = free_port(), free_port()
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("PREFECT_", "MLFLOW_", "QMLOPS_"))
    }
    env.update(
        {
            "PREFECT_PORT": str(prefect_port),
            "MLFLOW_PORT": str(mlflow_port),
            "QMLOPS_SERVE_DIR": str(root / "state"),
            "QMLOPS_MLFLOW_STORE": str(root / "mlflow"),
            # The worker runs flows in the project folder; keep their checkpoints out of it.
            "QMLOPS_CHECKPOINT_DIR": str(root / "checkpoints"),
            # score-batch reads its input from the tests' temporary folders.
            "QMLOPS_DATA_ROOT": str(tmp_path_factory.getbasetemp()),
            "PREFECT_WORKER_QUERY_SECONDS": "2",
        }
    )
    stack = Stack(
        env=env,
        state_dir=root / "state",
        api=f"http://{LOOPBACK}:{prefect_port}/api",
        mlflow_uri=f"http://{LOOPBACK}:{mlflow_port}",
    )
    try:
        yield stack
    finally:
        stack.make("stop")


def _deployment(stack: Stack, flow: str, name: str) -> dict[str, Any]:
    status, deployment = stack.call("GET", f"/deployments/name/{flow}/{name}")
    assert status == 200, deployment
    return deployment


def _wait_for_run(stack: Stack, flow_run_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while time.monotonic() < deadline:
        _, run = stack.call("GET", f"/flow_runs/{flow_run_id}")
        if run["state"]["type"] in TERMINAL:
            return run
        time.sleep(2)
    pytest.fail(f"flow run {flow_run_id} did not finish:\n{stack.log('worker')}")


def _run_from_ui(stack: Stack, deployment_id: str, parameters: dict[str, Any]) -> tuple[int, Any]:
    # What the UI's Run form posts: custom parameters and a scheduled state for now.
    return stack.call(
        "POST",
        f"/deployments/{deployment_id}/create_flow_run",
        {"parameters": parameters, "state": {"type": "SCHEDULED"}},
    )


def test_serve_deploys_runs_from_the_ui_and_stops(stack: Stack, tmp_path: Path) -> None:
    # Given `make serve`, run twice: the second run starts nothing new
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
    nightly = _deployment(stack, "train", "train-nightly")
    assert [s["schedule"]["cron"] for s in nightly["schedules"]] == ["0 2 * * *"]
    assert nightly["enforce_parameter_schema"]
    training = nightly["parameter_openapi_schema"]["definitions"]["TrainingConfig"]["properties"]
    assert training["optimizer"]["enum"] == ["adam", "spsa", "cobyla"]
    assert (training["maxiter"]["minimum"], training["maxiter"]["maximum"]) == (1, 10_000)
    assert training["maxiter"]["default"] == 100
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
    run = _wait_for_run(stack, created["id"])
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
    status, created = _run_from_ui(
        stack, _deployment(stack, "score", "score-batch")["id"], {"scoring": scoring}
    )
    assert status == 201, created
    assert _wait_for_run(stack, created["id"])["state"]["type"] == "COMPLETED", stack.log("worker")
    scored = pd.read_csv(tmp_path / "scored.csv")
    assert len(scored) == 25
    assert {"prediction", "probability_0", "probability_1"} <= set(scored.columns)
    scoring_experiment = client.get_experiment_by_name("qmlops-scoring")
    assert scoring_experiment is not None
    [score_run] = client.search_runs([scoring_experiment.experiment_id])
    assert score_run.data.params["model_version"] == version.version

    # Finally `make stop` stops exactly what serve started
    stopped = stack.make("stop")
    assert stopped.returncode == 0, stopped.stderr
    assert not any(_alive(pid) for pid in pids.values())
    assert not list(stack.state_dir.glob("*.pid"))
