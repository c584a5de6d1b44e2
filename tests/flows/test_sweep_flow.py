"""The sweep flow: thread runner in process, worker processes, a real local Ray, a failing config.

The process runner's sweep runs in this process against the session's Prefect server, and
through ``qmlops sweep`` with no server (its workers report to the flow's temporary server).
Ray workers are separate processes, so the Ray sweep runs through ``qmlops sweep`` in a
subprocess; the Ray it starts (``address="local"``: never one that was already running) stops
when the flow ends.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from mlflow import MlflowClient
from mlflow.artifacts import download_artifacts
from prefect.task_runners import ProcessPoolTaskRunner
from services import RunningService, free_port, prefect_server_env, ray_head, run_qmlops
from threadpoolctl import threadpool_info

from flows.sweep import sweep
from qmlops.classifier import QuantumClassifier
from qmlops.concurrency import available_cores, threads_per_training
from qmlops.config import TrackingConfig
from qmlops.search_space import SweepExecution, load_space, parse_space
from tasks.runners import SHARED_INTERPRETER_SWITCH_INTERVAL_S

SPACE_YAML = """
dataset: moons
samples: 60
validation_size: 0.2
qubits: 2
maxiter: 3
batch_size: none
seed: 5
grid:
  ansatz: [real_amplitudes, efficient_su2]
  reps: [1, 2]
"""
COMPARED = ("test_accuracy", "test_balanced_accuracy", "test_f1_macro", "test_roc_auc")


def _artifacts(client: MlflowClient, run_id: str, path: str = "") -> set[str]:
    found: set[str] = set()
    for item in client.list_artifacts(run_id, path):
        found |= _artifacts(client, run_id, item.path) if item.is_dir else {item.path}
    return found


def _start_time(run: Any) -> int:
    return int(run.info.start_time)


def _comparison(client: MlflowClient, tracking_uri: str, run_id: str) -> dict[str, Any]:
    path = download_artifacts(
        run_id=run_id, artifact_path="sweep/comparison.json", tracking_uri=tracking_uri
    )
    return json.loads(Path(path).read_text())


@pytest.fixture(scope="module")
def space_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("space") / "space.yaml"
    path.write_text(SPACE_YAML)
    return path


@pytest.fixture(scope="module")
def thread_sweep(
    prefect_harness: None, space_file: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """The 4-configuration sweep under the thread runner (run once, checked by several tests).

    Each training records, when its ``fit`` starts, the thread limits and the switch interval
    it runs under (``observed_in_fit``).
    """
    folder = tmp_path_factory.mktemp("threads")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    observed: list[dict[str, Any]] = []
    fit = QuantumClassifier.fit

    def observing_fit(self: QuantumClassifier, *args: Any, **kwargs: Any) -> Any:
        observed.append(
            {
                "switch_interval": sys.getswitchinterval(),
                **{api: _thread_limits(api) for api in ("openmp", "blas")},
            }
        )
        return fit(self, *args, **kwargs)

    # Train from scratch into a folder of this test, not into the working directory's
    # checkpoints (an earlier session's final checkpoints would let every training resume).
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("QMLOPS_CHECKPOINT_DIR", str(folder / "checkpoints"))
        patch.setattr(QuantumClassifier, "fit", observing_fit)
        result = sweep(
            space=load_space(space_file),
            execution=SweepExecution(runner="threads", max_parallel=2),
            tracking=TrackingConfig(
                experiment="sweep-test", tracking_uri=uri, register_model=False
            ),
        )
    return {**result, "observed_in_fit": observed}


def _thread_limits(user_api: str) -> set[int]:
    return {
        int(info["num_threads"])
        for info in threadpool_info()
        if info["user_api"] == user_api and info.get("threading_layer") != "disabled"
    }


def test_thread_sweep_trains_inside_its_thread_budget_and_switch_interval(
    thread_sweep: dict,
) -> None:
    # Given 2 configurations at a time, each may use its share of the cores
    threads = threads_per_training(2, available_cores())

    # Then every training ran under that budget and the shortened switch interval, not only
    # were they restored after (on one core the budget equals the default and proves less)
    observed = thread_sweep["observed_in_fit"]
    assert len(observed) == 4
    for seen in observed:
        assert seen["switch_interval"] == pytest.approx(SHARED_INTERPRETER_SWITCH_INTERVAL_S)
        assert seen["openmp"] == {threads}  # set in the training's own thread
        assert seen["blas"] == {threads}  # set once, process-wide, around all trainings


def test_thread_sweep_records_parent_children_and_comparison(thread_sweep: dict) -> None:
    client = MlflowClient(thread_sweep["tracking_uri"])
    parent = client.get_run(thread_sweep["run_id"])
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["sweep.runner"] == "threads"
    assert parent.data.params["sweep.configurations"] == "4"
    # the fan-out shortens the interpreter's switch interval only while it runs
    assert sys.getswitchinterval() == pytest.approx(0.005)

    # one finished child per configuration, nested under the parent, each a complete run
    children = client.search_runs(
        [parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    assert sorted(c.data.tags["sweep.configuration"] for c in children) == [
        "c000",
        "c001",
        "c002",
        "c003",
    ]
    # longest first, 2 at a time: the biggest circuit (c003, EfficientSU2 reps 2) starts in
    # the first pair, the smallest (c000, RealAmplitudes reps 1) only after one has finished
    started = [c.data.tags["sweep.configuration"] for c in sorted(children, key=_start_time)]
    assert "c003" in started[:2]
    assert "c000" in started[2:]
    for child in children:
        assert child.info.status == "FINISHED"
        assert child.data.params["circuit.n_qubits"] == "2"
        assert child.data.params["dataset.encoding_scale"] == "2.2"
        assert child.data.params["training.random_state"] == "5"
        assert len(client.get_metric_history(child.info.run_id, "train_loss")) == 4
        assert {"test_accuracy", "svc_test_accuracy", "circuit_parameters"} <= set(
            child.data.metrics
        )
        assert {"plots/training_curves.png", "evaluation.json", "model/model.json"} <= (
            _artifacts(client, child.info.run_id)
        )
        assert child.outputs.model_outputs  # the pyfunc model is logged on every child

    # the comparison: CSV, JSON and figures on the parent, the best named with its rule
    assert {
        "sweep/comparison.csv",
        "sweep/comparison.json",
        "sweep/search_space.json",
        "plots/accuracy_vs_parameters.png",
        "plots/accuracy_vs_time.png",
        "plots/loss_curves.png",
    } <= _artifacts(client, parent.info.run_id)
    comparison = _comparison(client, thread_sweep["tracking_uri"], parent.info.run_id)
    assert [row["configuration"] for row in comparison["rows"]] == ["c000", "c001", "c002", "c003"]
    assert comparison["best"]["configuration"] == parent.data.tags["sweep.best_configuration"]
    assert comparison["best"]["test_accuracy"] == max(
        r["test_accuracy"] for r in comparison["rows"]
    )
    assert "highest test_accuracy" in parent.data.tags["sweep.selection_rule"]
    assert {r["mlflow_run_id"] for r in comparison["rows"]} == {c.info.run_id for c in children}
    assert 0.0 <= parent.data.metrics["svc_test_accuracy"] <= 1.0


def test_thread_sweep_publishes_a_prefect_table(thread_sweep: dict) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        ArtifactFilterKey,
    )

    # Other sweeps in this session publish under the same key: read this sweep's own table,
    # by the Prefect flow run its parent MLflow run is tagged with.
    parent = MlflowClient(thread_sweep["tracking_uri"]).get_run(thread_sweep["run_id"])
    flow_run_id = parent.data.tags["prefect.flow_run_id"]

    async def published() -> list[Any]:
        async with get_client() as client:
            return await client.read_artifacts(
                artifact_filter=ArtifactFilter(
                    key=ArtifactFilterKey(any_=["sweep-comparison"]),
                    flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]),
                )
            )

    [artifact] = asyncio.run(published())
    assert artifact.type == "table"
    table = json.loads(artifact.data) if isinstance(artifact.data, str) else artifact.data
    assert {row["configuration"] for row in table} == {"c000", "c001", "c002", "c003"}
    assert "best:" in artifact.description


def serverless_env(tmp_path: Path) -> dict[str, str]:
    """The CLI's environment with no Prefect server: its own Prefect home and MLflow store."""
    return {
        **{key: value for key, value in os.environ.items() if key != "PREFECT_API_URL"},
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
    }


@pytest.mark.slow
@pytest.mark.integration
def test_ray_sweep_matches_the_thread_sweep(
    thread_sweep: dict, space_file: Path, tmp_path: Path
) -> None:
    # Given the same space, run through the CLI on a local Ray the flow starts and stops, with
    # no Prefect server: the Ray workers report to the flow's own temporary server
    env = serverless_env(tmp_path)
    env.pop("RAY_ADDRESS", None)
    completed = run_qmlops(
        ["sweep", "--space", str(space_file), "--runner", "ray", "--max-parallel", "2"]
        + ["--experiment", "sweep-test"],
        env,
        tmp_path,
        timeout_s=900,
    )
    output = completed.stdout + completed.stderr
    assert completed.returncode == 0, output[-6000:]
    assert "Started a local Ray instance" in output

    # Then the Ray sweep's parent run holds the same comparison: same seeds, same metrics
    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    (parent,) = client.search_runs(
        [client.get_experiment_by_name("sweep-test").experiment_id],
        "tags.`sweep.runner` = 'ray'",
    )
    assert parent.info.status == "FINISHED"
    ray_rows = _comparison(client, env["MLFLOW_TRACKING_URI"], parent.info.run_id)["rows"]
    thread_rows = thread_sweep["rows"]
    assert [r["configuration"] for r in ray_rows] == [r["configuration"] for r in thread_rows]
    for ray_row, thread_row in zip(ray_rows, thread_rows, strict=True):
        assert ray_row["status"] == "completed"
        for metric in COMPARED:
            assert ray_row[metric] == thread_row[metric], (ray_row, thread_row)
        assert ray_row["circuit_evaluations"] == thread_row["circuit_evaluations"]
        ray_loss = client.get_metric_history(ray_row["mlflow_run_id"], "train_loss")
        thread_loss = MlflowClient(thread_sweep["tracking_uri"]).get_metric_history(
            thread_row["mlflow_run_id"], "train_loss"
        )
        np.testing.assert_allclose(
            [m.value for m in ray_loss], [m.value for m in thread_loss], rtol=0, atol=1e-12
        )


PROCESS_SPACE_YAML = SPACE_YAML.replace("  ansatz: [real_amplitudes, efficient_su2]\n", "").replace(
    "seed: 5\n", "seed: 5\nansatz: efficient_su2\n"
)


def _by_axes(rows: list[dict[str, Any]]) -> dict[tuple[str, int], dict[str, Any]]:
    return {(row.get("ansatz") or "efficient_su2", row["reps"]): row for row in rows}


@pytest.mark.slow  # two spawned workers import Prefect, MLflow and the engine: about 20 s
def test_process_sweep_matches_the_thread_sweep(
    thread_sweep: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterParentFlowRunId,
        TaskRunFilter,
        TaskRunFilterName,
    )

    # Given two of the thread sweep's configurations (EfficientSU2, reps 1 and 2), each trained
    # in one of two worker processes
    monkeypatch.setenv("QMLOPS_CHECKPOINT_DIR", str(tmp_path / "checkpoints"))
    space = tmp_path / "space.yaml"
    space.write_text(PROCESS_SPACE_YAML)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = sweep(
        space=load_space(space),
        execution=SweepExecution(runner="processes", max_parallel=2),
        tracking=TrackingConfig(experiment="sweep-test", tracking_uri=uri, register_model=False),
    )

    # Then the same seeds give the same metrics as on threads
    process_rows = _by_axes(result["rows"])
    thread_rows = _by_axes(thread_sweep["rows"])
    assert set(process_rows) == {("efficient_su2", 1), ("efficient_su2", 2)}
    for axes, row in process_rows.items():
        assert row["status"] == "completed", row
        for metric in COMPARED:
            assert row[metric] == thread_rows[axes][metric], (row, thread_rows[axes])

    # and each configuration is a finished child of the parent run, as on threads
    client = MlflowClient(uri)
    parent = client.get_run(result["run_id"])
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["sweep.runner"] == "processes"
    children = client.search_runs(
        [parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    assert {c.info.run_id for c in children} == {r["mlflow_run_id"] for r in result["rows"]}
    assert {c.info.status for c in children} == {"FINISHED"}

    # and the worker processes' task runs completed in the sweep's own Prefect flow run
    async def training_states() -> list[str]:
        async with get_client() as prefect:
            return [
                str(task_run.state_type.value)
                for task_run in await prefect.read_task_runs(
                    flow_run_filter=FlowRunFilter(
                        parent_flow_run_id=FlowRunFilterParentFlowRunId(
                            any_=[parent.data.tags["prefect.flow_run_id"]]
                        )
                    ),
                    task_run_filter=TaskRunFilter(
                        name=TaskRunFilterName(any_=["train-c000", "train-c001"])
                    ),
                )
            ]

    assert sorted(asyncio.run(training_states())) == ["COMPLETED", "COMPLETED"]


@pytest.mark.slow
@pytest.mark.integration
def test_process_sweep_without_a_server_reports_to_the_flow_s_temporary_server(
    tmp_path: Path,
) -> None:
    # Given no Prefect server (the ephemeral mode of `qmlops sweep` and `make demo`)
    space = tmp_path / "space.yaml"
    space.write_text(PROCESS_SPACE_YAML)
    env = serverless_env(tmp_path)
    completed = run_qmlops(
        ["sweep", "--space", str(space), "--runner", "processes", "--max-parallel", "2"]
        + ["--experiment", "sweep-test"],
        env,
        tmp_path,
        timeout_s=600,
    )
    output = completed.stdout + completed.stderr

    # Then the workers reported to the flow's temporary server instead of each starting one
    assert completed.returncode == 0, output[-6000:]
    assert output.count("Starting temporary server") == 1, output[-6000:]
    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    (parent,) = client.search_runs(
        [client.get_experiment_by_name("sweep-test").experiment_id],
        "tags.`sweep.runner` = 'processes'",
    )
    children = client.search_runs(
        [parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    assert sorted(c.info.status for c in children) == ["FINISHED", "FINISHED"]


def test_a_refused_ray_token_is_a_configuration_error_and_an_outage_is_not() -> None:
    from qmlops.errors import ConfigurationError
    from tasks.ray_runner import RayUnavailableError, join_error

    # Ray 2.60 puts the refusal in the message of the ConnectionError's cause
    refused = ConnectionError("Failed to connect to Ray cluster at 10.0.0.5:6379")
    refused.__cause__ = RuntimeError(
        "Failed to connect to GCS. ray.exceptions.AuthenticationError: RPC error: "
        "InvalidAuthToken: Authentication token is missing or incorrect."
    )
    error = join_error("10.0.0.5:6379", refused)
    assert isinstance(error, ConfigurationError)
    assert "10.0.0.5:6379" in str(error)
    assert "RAY_AUTH_MODE=token" in str(error)

    down = join_error("10.0.0.5:6379", ConnectionError("Failed to connect to Ray cluster"))
    assert isinstance(down, RayUnavailableError)
    assert not isinstance(down, ConfigurationError)  # an outage may pass: not bad input
    assert "10.0.0.5:6379" in str(down)


def test_joining_an_address_where_nothing_listens_fails_at_once() -> None:
    from tasks.ray_runner import RaySession, RayUnavailableError

    address = f"127.0.0.1:{free_port()}"
    session = RaySession(
        SweepExecution(runner="ray", ray_address=address), "http://127.0.0.1:4200/api"
    ).start()
    try:
        # ray.init itself would retry for as long as it runs
        assert session._ready.wait(60), "still trying to join after 60 s"
        with pytest.raises(RayUnavailableError, match=f"cannot reach the Ray cluster at {address}"):
            session.wait()
    finally:
        session.close()


@pytest.mark.slow
@pytest.mark.integration
def test_a_sweep_joins_a_running_ray_cluster_by_address(
    prefect_server: RunningService, tmp_path: Path
) -> None:
    # Given a Ray head started by `ray start --head` (token authentication on) and a server
    port = int(prefect_server.url.rsplit(":", 1)[1].split("/")[0])
    env = {
        **os.environ,
        **prefect_server_env(tmp_path / "prefect-client", port),
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
    }
    for name in ("RAY_ADDRESS", "RAY_AUTH_MODE"):
        env.pop(name, None)

    def sweep_on(address: str, extra: dict[str, str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                str(Path(sys.executable).with_name("qmlops")),
                "sweep",
                *("--dataset", "moons", "--qubits", "2", "--maxiter", "3", "--seed", "1", "2"),
                *("--runner", "ray", "--ray-address", address, "--max-parallel", "2"),
                *("--experiment", "join-test"),
            ],
            env={**env, **extra},
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=600,
        )

    # A wrong address is reported as an outage (exit code 3), not left to Ray's endless retries
    nowhere = sweep_on(f"127.0.0.1:{free_port()}", {})
    assert nowhere.returncode == 3, nowhere.stderr[-4000:]
    assert "cannot reach the Ray cluster at 127.0.0.1:" in nowhere.stderr

    with ray_head(tmp_path) as address:
        # When the client does not use the cluster's token, the sweep says so and how to fix it
        refused = sweep_on(address, {})
        assert refused.returncode == 2, refused.stderr[-4000:]
        assert f"the Ray cluster at {address} refused" in refused.stderr
        assert "RAY_AUTH_MODE=token" in refused.stderr

        # Then, with it, the sweep runs on that cluster
        joined = sweep_on(address, {"RAY_AUTH_MODE": "token"})
        output = joined.stdout + joined.stderr
        assert joined.returncode == 0, output[-6000:]
        # (Ray logs the node's own address for a loopback one)
        assert "Connecting to existing Ray cluster at address: " in output
        assert f":{address.rsplit(':', 1)[1]}..." in output
        assert "Connected to Ray cluster." in output
        assert "Started a local Ray instance" not in output

    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name("join-test")
    assert experiment is not None
    (parent,) = client.search_runs(
        [experiment.experiment_id], "tags.`sweep.runner` = 'ray' and attributes.status = 'FINISHED'"
    )
    children = client.search_runs(
        [experiment.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    assert sorted(child.info.status for child in children) == ["FINISHED", "FINISHED"]


@pytest.mark.usefixtures("prefect_harness")
def test_a_failing_configuration_is_reported_and_the_others_complete(
    mlflow_uri: str, tmp_path: Path
) -> None:
    # Given a grid where 24 qubits on breast_cancer exceed the size guard
    space = parse_space(
        {"dataset": "breast_cancer", "maxiter": 2, "batch_size": 16, "grid": {"qubits": [2, 24]}}
    )

    # When the sweep runs (and registers its best model)
    result = sweep(
        space=space,
        execution=SweepExecution(
            max_parallel=2, register_best=True, result_storage=str(tmp_path / "results")
        ),
        tracking=TrackingConfig(experiment="sweep-failure", model_name="sweep-best"),
    )

    # Then it completes, the small configuration is trained and the large one reported
    rows = {row["configuration"]: row for row in result["rows"]}
    assert rows["c000"]["status"] == "completed"
    assert rows["c001"]["status"] == "failed"
    assert rows["c001"]["error"].startswith("SizeLimitError")
    assert rows["c001"]["mlflow_run_id"] is None
    assert result["best"]["configuration"] == "c000"
    client = MlflowClient(mlflow_uri)
    parent = client.get_run(result["run_id"])
    assert parent.info.status == "FINISHED"
    assert parent.data.metrics["configurations_failed"] == 1
    comparison = _comparison(client, mlflow_uri, result["run_id"])
    assert comparison["rows"][1]["error"].startswith("SizeLimitError")
    children = client.search_runs(
        [parent.info.experiment_id], f"tags.mlflow.parentRunId = '{result['run_id']}'"
    )
    assert [c.data.tags["sweep.configuration"] for c in children] == ["c000"]
    assert list((tmp_path / "results").iterdir())  # outcomes persisted where asked
    assert result["registered_version"] == "1"
    version = client.get_model_version("sweep-best", "1")
    assert version.run_id == rows["c000"]["mlflow_run_id"]


@pytest.mark.usefixtures("prefect_harness")
def test_a_child_run_opens_while_the_store_lock_is_held(mlflow_uri: str) -> None:
    from tasks.tracking import prepare_store, start_child_run, start_tracking_run

    # Given a sweep's parent run, and another process holding the store's creation lock
    parent = start_tracking_run(mlflow_uri, "child-lock", run_name="parent", tags={})
    database = Path(mlflow_uri.removeprefix("sqlite:///"))
    opened: list[Any] = []
    with open(database.with_name(database.name + ".lock"), "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        try:
            # When a configuration opens its child run
            opener = threading.Thread(
                target=lambda: opened.append(start_child_run(parent, "c000", {"k": "v"}))
            )
            opener.start()
            opener.join(timeout=60)
            waited = opener.is_alive()
        finally:
            fcntl.flock(held, fcntl.LOCK_UN)
        opener.join()

    # Then it did not queue on the lock, and it is nested in the parent's experiment
    assert not waited
    (child,) = opened
    run = MlflowClient(mlflow_uri).get_run(child.run_id)
    assert run.info.experiment_id == parent.experiment_id == prepare_store(mlflow_uri, "child-lock")
    assert run.data.tags["mlflow.parentRunId"] == parent.run_id
    assert run.data.tags["k"] == "v"
    assert run.info.status == "RUNNING"


def test_sweep_weekly_deployment_parameters_validate_against_the_flow() -> None:
    import yaml
    from prefect.utilities.callables import parameter_schema

    from qmlops.search_space import SearchSpace, expand

    project = yaml.safe_load((Path(__file__).parents[2] / "prefect.yaml").read_text())
    (deployment,) = [d for d in project["deployments"] if d["name"] == "sweep-weekly"]
    assert deployment["entrypoint"] == "flows/sweep.py:sweep"
    assert deployment["work_pool"]["name"] == "qmlops-local"
    assert deployment["schedules"][0]["cron"] == "0 3 * * 0"

    # the parameters are exactly the flow's: Prefect validates them into the pydantic models
    parameters = deployment["parameters"]
    assert set(parameters) <= set(parameter_schema(sweep).properties)
    validated = sweep.validate_parameters(parameters)
    assert isinstance(validated["space"], SearchSpace)
    assert len(expand(validated["space"])) == 8
    assert validated["execution"].runner == "threads"


def test_a_ray_cluster_without_a_prefect_server_is_refused_before_anything_runs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from qmlops.errors import ConfigurationError
    from tasks.runners import make_task_runner

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    cluster = SweepExecution(runner="ray", ray_address="ray://head:10001")
    with pytest.raises(ConfigurationError, match="needs a Prefect server its workers can reach"):
        make_task_runner(cluster, None)
    # Outside a flow run there is no temporary server for a local Ray either
    with pytest.raises(ConfigurationError, match="needs a Prefect server"):
        make_task_runner(SweepExecution(runner="ray"), None)
    runner = make_task_runner(SweepExecution(runner="threads", max_parallel=3), None)
    assert runner._max_workers == 3
    # The process runner needs no server outside a flow run: Prefect's default applies
    processes = make_task_runner(SweepExecution(runner="processes", max_parallel=3), None)
    assert isinstance(processes, ProcessPoolTaskRunner)
    assert processes._initializer is None


@pytest.mark.usefixtures("prefect_harness")
def test_a_local_ray_reports_to_the_flow_s_own_server(monkeypatch: pytest.MonkeyPatch) -> None:
    from prefect import flow
    from prefect.context import FlowRunContext

    from tasks.runners import make_task_runner

    monkeypatch.delenv("RAY_ADDRESS", raising=False)

    @flow
    def plan_runner() -> tuple[str, dict]:
        context = FlowRunContext.get()
        assert context is not None
        runner = make_task_runner(SweepExecution(runner="ray"), None)
        return str(context.client.api_url), runner.init_kwargs["runtime_env"]["env_vars"]

    served_by, worker_env = plan_runner()
    assert worker_env["PREFECT_API_URL"] == served_by


def test_ray_runner_joins_a_given_cluster_or_starts_its_own(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from prefect_ray import RayTaskRunner

    from tasks.ray_runner import ray_init_arguments
    from tasks.runners import make_task_runner

    api = "http://127.0.0.1:4200/api"
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///tracking.db")
    # A local Ray's workers inherit the environment Ray starts in: no runtime_env
    address, init_kwargs, inherited = ray_init_arguments(
        SweepExecution(runner="ray", max_parallel=3), api
    )
    assert address == "local"  # a fresh Ray, never one already running here
    assert init_kwargs["num_cpus"] == 3
    assert "runtime_env" not in init_kwargs
    assert inherited["PREFECT_API_URL"] == api
    assert inherited["MLFLOW_TRACKING_URI"] == "sqlite:///tracking.db"
    # A runner that starts Ray itself (no session) carries the variables in a runtime_env
    local = make_task_runner(SweepExecution(runner="ray", max_parallel=3), api)
    assert isinstance(local, RayTaskRunner)
    assert local.address == "local"
    assert local.init_kwargs["runtime_env"]["env_vars"] == inherited

    monkeypatch.setenv("RAY_ADDRESS", "ray://head:10001")
    joined = make_task_runner(SweepExecution(runner="ray"), api)
    assert joined.address == "ray://head:10001"
    assert "num_cpus" not in joined.init_kwargs
    assert joined.init_kwargs["runtime_env"]["env_vars"]["PREFECT_API_URL"] == api
    _, _, inherited = ray_init_arguments(SweepExecution(runner="ray"), api)
    assert inherited == {}  # a cluster's workers cannot inherit this process's environment
    given = make_task_runner(SweepExecution(runner="ray", ray_address="ray://other:10001"), api)
    assert given.address == "ray://other:10001"


@pytest.mark.slow
@pytest.mark.integration
def test_ray_session_starts_ray_in_the_background_with_the_workers_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import ray

    from tasks.ray_runner import sweep_ray

    # Given no PREFECT_API_URL in this process (the API comes from the flow's settings)
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    api = "http://127.0.0.1:4999/api"
    assert not ray.is_initialized()

    # When a session starts a local Ray and a task asks for its environment
    with sweep_ray(SweepExecution(runner="ray", max_parallel=1), api) as session:
        assert session is not None
        session.wait()

        @ray.remote
        def worker_api_url() -> str | None:
            return os.environ.get("PREFECT_API_URL")

        seen = ray.get(worker_api_url.remote(), timeout=120)
        # Then the worker reports to the flow's API, and this process's environment is unchanged
        assert seen == api
        assert "PREFECT_API_URL" not in os.environ
        session.stop()

    # And leaving the session stops Ray
    assert not ray.is_initialized()
    with sweep_ray(SweepExecution(runner="threads"), None) as none:
        assert none is None


def test_cli_refuses_a_bad_sweep_before_any_flow_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from qmlops_cli import main

    assert main(["sweep", "--reps", "0", "1"]) == 2
    assert "configuration c000 (reps=0) is invalid" in capsys.readouterr().err
    assert main(["sweep", "--space", str(tmp_path / "nowhere.yaml")]) == 2
    assert "cannot read search space" in capsys.readouterr().err
    (tmp_path / "space.yaml").write_text("grid:\n  noise: [0.1]\n")
    assert main(["sweep", "--space", str(tmp_path / "space.yaml")]) == 2
    assert "'noise' is not available" in capsys.readouterr().err


def test_a_dead_worker_process_is_a_failed_configuration_not_a_failed_sweep() -> None:
    import concurrent.futures
    import uuid
    from concurrent.futures.process import BrokenProcessPool

    from prefect.futures import PrefectConcurrentFuture
    from prefect.states import Completed

    from flows.sweep import failure_of

    # Given a worker process killed while it trained (the pool raises instead of a state)
    broken: concurrent.futures.Future[Any] = concurrent.futures.Future()
    broken.set_exception(BrokenProcessPool("A process in the process pool was terminated"))
    completed: concurrent.futures.Future[Any] = concurrent.futures.Future()
    completed.set_result(Completed())

    # Then its configuration is reported as failed, with why, and a completed one is not
    assert failure_of(PrefectConcurrentFuture(task_run_id=uuid.uuid4(), wrapped_future=broken)) == (
        "BrokenProcessPool: A process in the process pool was terminated"
    )
    assert failure_of(PrefectConcurrentFuture(uuid.uuid4(), completed)) is None
