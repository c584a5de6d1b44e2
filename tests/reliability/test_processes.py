"""Reliability with real processes: kill -9, SIGTERM, 8 flows at once, MLflow down, timeouts.

Each flow runs in a child process (``services.start_flow``) against the session's real
Prefect server and a real MLflow store or server; faults are injected through
``QMLOPS_FAULTS`` (``tasks/faults.py``), and the test sends the real signal.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import httpx
import pytest
import services
from mlflow import MlflowClient
from mlflow.artifacts import download_artifacts
from prefect_runs import task_run_counts
from services import RunningService, start_flow, wait_for_file

pytestmark = pytest.mark.integration

MAXITER = 8
CHILD_LIMIT_S = 300
"""How long a test waits for a flow that should end by itself (start-up included)."""


def _params(seed: int, experiment: str = "qmlops", **extra: object) -> dict:
    return {
        "dataset": {"name": "moons", "n_samples": 40},
        "circuit": {"n_qubits": 2, "ansatz_reps": 1},
        "training": {
            "maxiter": MAXITER,
            "batch_size": 8,
            "random_state": seed,
            "checkpoint_every": 2,
        },
        "tracking": {"register_model": False, "experiment": experiment},
        **extra,
    }


def _env(workdir: Path, prefect: RunningService, tracking_uri: str | None = None) -> dict:
    return {
        "PREFECT_API_URL": prefect.url,
        "PREFECT_HOME": str(workdir / "prefect-home"),
        "PREFECT_LOCAL_STORAGE_PATH": str(workdir / "results"),
        "MLFLOW_TRACKING_URI": tracking_uri or f"sqlite:///{workdir / 'mlruns' / 'mlflow.db'}",
        "QMLOPS_FAULTS": "",
        "QMLOPS_FAULT_MARKER": str(workdir / "marker"),
    }


def _runs(tracking_uri: str, experiment: str = "qmlops") -> list:
    client = MlflowClient(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    return [] if found is None else client.search_runs([found.experiment_id])


def _completed(outcome: dict) -> dict:
    assert outcome["state"] == "Completed", outcome
    return outcome["result"]


def _weights(tracking_uri: str, run_id: str) -> list[float]:
    path = download_artifacts(
        run_id=run_id, artifact_path="model/model.json", tracking_uri=tracking_uri
    )
    return json.loads(Path(path).read_text())["body"]["classifier"]["weights"]


def test_kill_9_mid_training_then_rerun_resumes_and_closes_the_orphan(
    tmp_path: Path, prefect_server: RunningService
) -> None:
    env = _env(tmp_path, prefect_server)
    uri = env["MLFLOW_TRACKING_URI"]

    # Given a flow stopped at iteration 5 (checkpoints every 2 iterations), killed with SIGKILL
    child = start_flow(tmp_path, "killed", _params(21), {**env, "QMLOPS_FAULTS": "hang:train:5"})
    wait_for_file(tmp_path / "marker", child.process)
    os.kill(child.process.pid, signal.SIGKILL)
    child.process.wait(timeout=60)
    (orphan,) = _runs(uri)
    assert orphan.info.status == "RUNNING"
    checkpoints = sorted(p.name for p in (tmp_path / ".qmlops" / "checkpoints").rglob("ckpt-*"))
    assert checkpoints[-1] == "ckpt-000000004.json"

    # When the same flow runs again, it closes the orphan as KILLED and resumes at iteration 4
    resumed = _completed(start_flow(tmp_path, "resumed", _params(21), env).wait())
    assert resumed["resumed_from_iteration"] == 4
    assert resumed["training_cached"] is False
    client = MlflowClient(uri)
    orphan = client.get_run(orphan.info.run_id)
    assert orphan.info.status == "KILLED"
    assert "is gone" in orphan.data.tags["qmlops.closed_by"]

    # And the result equals an uninterrupted run from scratch with the same seed
    fresh = _completed(start_flow(tmp_path, "fresh", _params(21, force=True), env).wait())
    assert fresh["resumed_from_iteration"] == 0
    history = [
        [m.value for m in client.get_metric_history(r["run_id"], "train_loss")]
        for r in (resumed, fresh)
    ]
    assert len(history[0]) == MAXITER + 1
    assert history[0] == history[1]
    assert _weights(uri, resumed["run_id"]) == _weights(uri, fresh["run_id"])


def test_sigterm_crashes_the_flow_and_kills_its_mlflow_run(
    tmp_path: Path, prefect_server: RunningService
) -> None:
    env = _env(tmp_path, prefect_server)
    child = start_flow(tmp_path, "term", _params(22), {**env, "QMLOPS_FAULTS": "hang:train:2"})
    wait_for_file(tmp_path / "marker", child.process)
    os.kill(child.process.pid, signal.SIGTERM)
    child.process.wait(timeout=120)
    assert child.process.returncode != 0

    (run,) = _runs(env["MLFLOW_TRACKING_URI"])
    assert run.info.status == "KILLED", child.log()[-3000:]
    flow_run_id = run.data.tags["prefect.flow_run_id"]
    response = httpx.get(f"{prefect_server.url}/flow_runs/{flow_run_id}", timeout=30)
    assert response.json()["state"]["type"] == "CRASHED"


def _run_eight_at_once(workdir: Path, env: dict, experiment: str) -> list[dict]:
    children = [
        start_flow(workdir, f"flow{i}", _params(23, experiment=experiment), env) for i in range(8)
    ]
    outcomes = [child.wait() for child in children]
    for child in children:
        log = child.log()
        assert "database is locked" not in log
        assert "alembic" not in log.lower() or "Traceback" not in log  # no failed migration
    return [_completed(outcome) for outcome in outcomes]


def _assert_complete_and_distinct(results: list[dict], tracking_uri: str) -> None:
    client = MlflowClient(tracking_uri)
    assert len({r["run_id"] for r in results}) == 8
    for result in results:
        run = client.get_run(result["run_id"])
        assert run.info.status == "FINISHED"
        steps = [m.step for m in client.get_metric_history(result["run_id"], "train_loss")]
        assert sorted(steps) == list(range(MAXITER + 1))
        for name in ("test_accuracy", "svc_test_accuracy", "circuit_evaluations"):
            assert name in run.data.metrics
    # The same training was asked for eight times: it ran once, the others read the cache.
    assert sorted(r["training_cached"] for r in results) == [False] + [True] * 7


@pytest.mark.slow
def test_eight_flows_at_once_on_a_fresh_sqlite_store(
    tmp_path: Path, prefect_server: RunningService
) -> None:
    env = _env(tmp_path, prefect_server)
    results = _run_eight_at_once(tmp_path, env, "concurrent")
    _assert_complete_and_distinct(results, env["MLFLOW_TRACKING_URI"])


@pytest.mark.slow
def test_eight_flows_at_once_against_the_mlflow_server(
    tmp_path: Path, prefect_server: RunningService, mlflow_server: RunningService
) -> None:
    env = _env(tmp_path, prefect_server, mlflow_server.url)
    results = _run_eight_at_once(tmp_path, env, "concurrent-server")
    _assert_complete_and_distinct(results, mlflow_server.url)


@pytest.mark.slow
def test_mlflow_down_mid_run_fails_the_run_and_a_rerun_completes(
    tmp_path: Path, prefect_server: RunningService
) -> None:
    port = services.free_port()
    # Given a flow paused mid-training while the tracking server is up
    with services.mlflow_server(tmp_path / "server", port=port) as server:
        env = _env(tmp_path, prefect_server, server.url)
        child = start_flow(tmp_path, "down", _params(24), {**env, "QMLOPS_FAULTS": "pause:train:3"})
        wait_for_file(tmp_path / "marker", child.process)
    # When the server goes away and the flow goes on, then the flow fails
    (tmp_path / "marker").unlink()
    outcome = child.wait()
    assert outcome["state"] == "Failed", outcome
    pending = list((tmp_path / ".qmlops" / "pending-close").glob("*.json"))
    assert len(pending) == 1
    assert list((tmp_path / ".qmlops" / "checkpoints").rglob("ckpt-*"))

    # And once the server is back, the next flow closes the old run FAILED and completes
    # without training again: the first flow's training finished before MLflow was needed
    with services.mlflow_server(tmp_path / "server", port=port) as server:
        result = _completed(start_flow(tmp_path, "again", _params(24), env).wait())
        assert result["training_cached"] is True
        assert result["resumed_from_iteration"] == 0
        client = MlflowClient(server.url)
        failed = client.get_run(pending[0].stem)
        assert failed.info.status == "FAILED"
        assert client.get_run(result["run_id"]).info.status == "FINISHED"
    assert not list((tmp_path / ".qmlops" / "pending-close").glob("*.json"))


@pytest.mark.slow
def test_training_timeout_is_enforced_and_not_retried(
    tmp_path: Path, prefect_server: RunningService
) -> None:
    # Given a training that hangs at iteration 2 under a 2 s limit, in a child process: if the
    # limit failed, this test would fail after CHILD_LIMIT_S instead of hanging the suite
    env = _env(tmp_path, prefect_server)
    params = _params(13)
    params["training"]["timeout_s"] = 2
    child = start_flow(tmp_path, "hang", params, {**env, "QMLOPS_FAULTS": "hang:train:2"})
    try:
        outcome = child.wait(timeout_s=CHILD_LIMIT_S)
    except subprocess.TimeoutExpired:
        child.process.kill()
        child.process.wait(timeout=60)
        pytest.fail(f"the training's time limit did not end the flow:\n{child.log()[-3000:]}")

    # Then the flow fails with the timeout, the training ran once, and its MLflow run FAILED
    assert outcome["state"] in ("Failed", "TimedOut"), outcome  # both are failed states
    assert "TimeoutError" in outcome["error"]
    counts = task_run_counts(outcome["flow_run_id"], api_url=prefect_server.url)
    assert counts["train-classifier"] == 1
    (run,) = _runs(env["MLFLOW_TRACKING_URI"])
    assert run.info.status == "FAILED"
    assert "TimeoutError" in run.data.tags["error"]
