"""Reliability of the train flow in-process: caching, retries, timeouts, fast failures, secrets."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient
from mlflow.artifacts import download_artifacts
from prefect_runs import task_run_counts
from services import free_port

from flows.train import train
from qmlops.config import CircuitConfig, DatasetConfig, TrackingConfig, TrainingConfig
from qmlops.data import load_builtin
from qmlops.errors import ModelFormatError, UnsafePathError
from tasks import faults
from tasks.tracking import TrackingUnavailableError

pytestmark = pytest.mark.usefixtures("prefect_harness")

MAXITER = 6


def _params(seed: int, **training: object) -> dict:
    return {
        "dataset": DatasetConfig(name="moons", n_samples=40),
        "circuit": CircuitConfig(n_qubits=2, ansatz_reps=1),
        "training": TrainingConfig(
            maxiter=MAXITER, batch_size=8, random_state=seed, checkpoint_every=1, **training
        ),
        "tracking": TrackingConfig(register_model=False),
    }


def _steps(client: MlflowClient, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


@pytest.fixture
def fault_env(monkeypatch: pytest.MonkeyPatch):
    def arm(spec: str) -> None:
        faults.reset()
        monkeypatch.setenv(faults.FAULTS_ENV, spec)

    yield arm
    faults.reset()


def test_rerun_uses_the_cache_and_still_records_a_complete_run(mlflow_uri: str) -> None:
    # Given a first run; when the same inputs run again, then training comes from the cache
    first = train(**_params(seed=11))
    second = train(**_params(seed=11))
    forced = train(**_params(seed=11), force=True)
    assert (first["training_cached"], second["training_cached"]) == (False, True)
    assert forced["training_cached"] is False
    assert forced["resumed_from_iteration"] == 0

    # And every flow run still has its own complete MLflow run with identical results
    client = MlflowClient(mlflow_uri)
    runs = [client.get_run(r["run_id"]) for r in (first, second, forced)]
    assert len({r.info.run_id for r in runs}) == 3
    for run in runs:
        assert run.info.status == "FINISHED"
        assert _steps(client, run.info.run_id, "train_loss") == list(range(MAXITER + 1))
        assert "test_accuracy" in run.data.metrics
    assert runs[1].data.tags["qmlops.training_cached"] == "true"
    losses = [
        [m.value for m in client.get_metric_history(r.info.run_id, "train_loss")] for r in runs
    ]
    assert losses[0] == losses[1] == losses[2]


def test_transient_faults_are_retried_without_duplicate_metric_steps(
    mlflow_uri: str, fault_env
) -> None:
    # Given a simulator-side fault at iteration 3 and a tracking fault after the first batch
    fault_env("fail:train:3,fail:log-metrics")

    # When the flow runs, then it completes
    state = train(**_params(seed=12), return_state=True)
    assert state.is_completed()
    result = state.result()

    # The training was retried and resumed from its checkpoint, the logging was retried
    counts = task_run_counts(str(state.state_details.flow_run_id))
    assert counts["train-classifier"] == 2
    assert counts["log-training"] == 2
    assert result["resumed_from_iteration"] == 3

    # And every metric step is there exactly once
    client = MlflowClient(mlflow_uri)
    for key in ("train_loss", "train_accuracy"):
        assert _steps(client, result["run_id"], key) == list(range(MAXITER + 1))
    assert len(client.get_metric_history(result["run_id"], "training_time_s")) == 1


def test_unreachable_tracking_server_fails_the_flow_at_start(mlflow_uri: str) -> None:
    params = _params(seed=14)
    params["tracking"] = TrackingConfig(tracking_uri=f"http://127.0.0.1:{free_port()}")
    state = train(**params, return_state=True)
    assert state.is_failed()
    with pytest.raises(TrackingUnavailableError, match="is unavailable"):
        state.result()
    counts = task_run_counts(str(state.state_details.flow_run_id))
    assert counts == {"prepare-tracking": 3}  # bounded retries, and nothing else ran


def test_data_path_outside_the_root_is_refused_without_retries(
    mlflow_uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "data"
    root.mkdir()
    (tmp_path / "outside.csv").write_text("a,b,label\n1,2,x\n3,4,y\n")
    monkeypatch.setenv("QMLOPS_DATA_ROOT", str(root))
    state = train(dataset=DatasetConfig(path="../outside.csv", target="label"), return_state=True)
    with pytest.raises(UnsafePathError):
        state.result()
    counts = task_run_counts(str(state.state_details.flow_run_id))
    assert counts["load-dataset"] == 1


def test_secrets_are_never_logged_and_tampered_models_are_refused(
    mlflow_uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tasks.tracking import TrackedRun, log_run_inputs, set_run_tags, without_secrets

    secret = "hunter2-very-secret"
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", secret)
    params = _params(seed=15)
    params["tracking"] = TrackingConfig(register_model=True, model_name="tamper-test")
    result = train(**params)
    client = MlflowClient(mlflow_uri)
    run = client.get_run(result["run_id"])

    # Given extra inputs that carry secrets; when logged through the tracking tasks
    tracked = TrackedRun(mlflow_uri, run.info.experiment_id, run.info.run_id)
    dataset = load_builtin("moons", n_samples=40)
    log_run_inputs.fn(
        tracked,
        {"extra": {"api_token": "t0k3n-value", "db_password": "pw-value", "note": secret}},
        dataset,
    )
    set_run_tags.fn(tracked, {"auth_header": "Bearer abc", "copied": secret, "ok": "yes"})

    # Then no secret name or value appears in any param or tag
    run = client.get_run(result["run_id"])
    logged = {**run.data.params, **run.data.tags}
    assert logged["ok"] == "yes"
    for key, value in logged.items():
        for leaked in (secret, "t0k3n", "pw-value", "Bearer"):
            assert leaked not in value, key
        assert without_secrets({key: "x"}) == {key: "x"}, key

    # And the registered pyfunc refuses a tampered copy of its model document
    model_dir = Path(
        download_artifacts(
            artifact_uri=result["model_uri"], tracking_uri=mlflow_uri, dst_path=str(tmp_path / "m")
        )
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert mlflow.pyfunc.load_model(str(model_dir)) is not None
    assert not [w for w in caught if "type hints" in str(w.message)]  # predict is hinted
    tampered = tmp_path / "tampered"
    shutil.copytree(model_dir, tampered)
    (document_path,) = list(tampered.rglob("model.json"))
    document = json.loads(document_path.read_text())
    document["body"]["classifier"]["weights"][0] += 1.0
    document_path.write_text(json.dumps(document))
    with pytest.raises(ModelFormatError, match="integrity"):
        mlflow.pyfunc.load_model(str(tampered))


def test_orphan_sweep_closes_only_runs_whose_owner_is_gone(mlflow_uri: str) -> None:
    from tasks.tracking import close_orphaned_runs, prepare_store
    from tasks.tracking.orphans import flow_run_final
    from tasks.tracking.owners import owner_tags

    # Given a flow run that reached a final state (it failed on a missing file)
    state = train(dataset=DatasetConfig(path="missing.csv", target="y"), return_state=True)
    finished_flow = str(state.state_details.flow_run_id)
    assert flow_run_final(finished_flow) is True
    assert flow_run_final("00000000-0000-0000-0000-000000000000") is None

    # And RUNNING MLflow runs owned by: this live process, a dead pid here, another host
    client = MlflowClient(mlflow_uri)
    experiment_id = prepare_store(mlflow_uri, "sweep")
    live = client.create_run(experiment_id, tags=owner_tags()).info.run_id
    dead_tags = {**owner_tags(), "qmlops.pid": "999999999"}
    dead = client.create_run(experiment_id, tags=dead_tags).info.run_id
    remote = {"qmlops.host": "elsewhere", "qmlops.pid": "1"}
    remote_done = client.create_run(
        experiment_id, tags={**remote, "prefect.flow_run_id": finished_flow}
    ).info.run_id
    remote_unknown = client.create_run(experiment_id, tags=remote).info.run_id

    # When a flow start sweeps, then only the runs whose owner is known to be gone are closed
    closed = close_orphaned_runs(mlflow_uri, "sweep")
    assert closed == {dead: "KILLED", remote_done: "KILLED"}
    statuses = {run: client.get_run(run).info.status for run in (live, remote_unknown)}
    assert statuses == {live: "RUNNING", remote_unknown: "RUNNING"}


def test_cli_reports_an_unreachable_tracking_server(
    mlflow_uri: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from qmlops_cli import EXIT_UNAVAILABLE, main

    uri = f"http://127.0.0.1:{free_port()}"
    assert main(["train", "--dataset", "moons", "--tracking-uri", uri]) == EXIT_UNAVAILABLE
    assert f"MLflow tracking server {uri} is unavailable" in capsys.readouterr().err
