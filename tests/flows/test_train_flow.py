"""The train flow end to end: real Prefect engine, real MLflow store, real simulation."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from mlflow.artifacts import download_artifacts
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

from flows.train import train
from qmlops.config import CircuitConfig, DatasetConfig, TrackingConfig, TrainingConfig
from qmlops.errors import DatasetError
from qmlops.model import DeployedModel

pytestmark = pytest.mark.usefixtures("prefect_harness")

MAXITER = 4
SMALL = {
    "dataset": DatasetConfig(name="moons", n_samples=60, validation_size=0.2),
    "circuit": CircuitConfig(n_qubits=2, ansatz_reps=1),
    "training": TrainingConfig(maxiter=MAXITER, batch_size=None, random_state=7),
}


def _artifact_paths(client: MlflowClient, run_id: str, path: str = "") -> set[str]:
    found: set[str] = set()
    for item in client.list_artifacts(run_id, path):
        if item.is_dir:
            found |= _artifact_paths(client, run_id, item.path)
        else:
            found.add(item.path)
    return found


def test_train_flow_records_a_complete_mlflow_run(mlflow_uri: str, tmp_path: Path) -> None:
    # Given a small configuration and a fresh store; when the flow runs
    result = train(**SMALL, tracking=TrackingConfig(model_name="moons-test"))

    # Then one finished MLflow run holds everything the issue lists
    client = MlflowClient(mlflow_uri)
    run = client.get_run(result["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.tags["prefect.flow_run_id"]
    assert run.data.tags["prefect.flow_run_name"] == run.info.run_name
    params = run.data.params
    assert params["circuit.n_qubits"] == "2"
    assert params["dataset.encoding_scale"] == "2.2"  # resolved for 2 qubits before logging
    assert params["training.maxiter"] == str(MAXITER)
    assert params["training.random_state"] == "7"
    assert len(params["dataset.fingerprint"]) == 64
    assert params["version.qiskit"]
    assert params["version.qiskit-aer"]

    history = client.get_metric_history(run.info.run_id, "train_loss")
    assert [m.step for m in history] == list(range(MAXITER + 1))
    assert len(client.get_metric_history(run.info.run_id, "validation_accuracy")) == MAXITER + 1
    metrics = run.data.metrics
    for prefix in ("", "svc_", "logistic_regression_"):
        for name in ("accuracy", "balanced_accuracy", "f1_macro", "roc_auc"):
            assert 0.0 <= metrics[f"{prefix}test_{name}"] <= 1.0
    assert metrics["circuit_width"] == 2
    assert metrics["circuit_parameters"] > 0
    assert metrics["circuit_depth"] > 0
    assert metrics["circuit_evaluations"] > 0
    assert metrics["primitive_calls"] == MAXITER + 1
    assert metrics["training_time_s"] > 0

    artifacts = _artifact_paths(client, run.info.run_id)
    assert {
        "plots/circuit.png",
        "plots/training_curves.png",
        "plots/confusion_matrix.png",
        "circuit/circuit.qpy",
        "evaluation.json",
        "model/model.json",
    } <= artifacts
    evaluation = json.loads(
        Path(
            download_artifacts(
                run_id=run.info.run_id, artifact_path="evaluation.json", tracking_uri=mlflow_uri
            )
        ).read_text()
    )
    assert set(evaluation) == {"quantum", "svc", "logistic_regression"}

    # And the model is registered and stored without pickles
    version = client.get_model_version("moons-test", result["registered_version"])
    assert version.source.startswith("models:/m-") or "m-" in version.source
    model_dir = Path(
        download_artifacts(
            artifact_uri=result["model_uri"],
            tracking_uri=mlflow_uri,
            dst_path=str(tmp_path / "model"),
        )
    )
    assert not list(model_dir.rglob("*.pkl"))
    assert not list(model_dir.rglob("*.pickle"))


def test_early_stopping_is_visible_in_the_run(mlflow_uri: str) -> None:
    # Given early stopping that no improvement satisfies, on the flow's validation split
    training = SMALL["training"].model_copy(
        update={"early_stopping": True, "n_iter_no_change": 1, "tol": 10.0}
    )
    result = train(
        **{**SMALL, "training": training},
        tracking=TrackingConfig(model_name="moons-early", register_model=False),
    )

    # Then the run records the settings, where training stopped and which weights it kept
    client = MlflowClient(mlflow_uri)
    run = client.get_run(result["run_id"])
    assert run.data.params["training.early_stopping"] == "True"
    assert run.data.params["training.n_iter_no_change"] == "1"
    metrics = run.data.metrics
    assert (metrics["iterations"], metrics["best_iteration"], metrics["stopped_early"]) == (1, 0, 1)
    losses = client.get_metric_history(run.info.run_id, "validation_loss")
    # records 0 and 1, then the restored initial weights measured once more
    assert [m.step for m in losses] == [0, 1, 2]
    assert metrics["best_validation_loss"] == pytest.approx(losses[0].value)


def test_registered_model_predicts_the_same_in_a_fresh_process(
    mlflow_uri: str, tmp_path: Path
) -> None:
    result = train(**SMALL, tracking=TrackingConfig(model_name="reload-test"))
    document = json.loads(
        Path(
            download_artifacts(
                run_id=result["run_id"], artifact_path="model/model.json", tracking_uri=mlflow_uri
            )
        ).read_text()
    )
    in_process = DeployedModel(document)
    rows = pd.DataFrame(
        np.random.default_rng(0).normal(size=(25, 2)), columns=in_process.feature_names
    )
    rows.to_csv(tmp_path / "rows.csv", index=False)
    expected = in_process.predict_proba(rows)

    script = (
        "import sys, mlflow, pandas as pd\n"
        f"mlflow.set_tracking_uri({mlflow_uri!r})\n"
        "model = mlflow.pyfunc.load_model('models:/reload-test/1')\n"
        "out = model.predict(pd.read_csv(sys.argv[1]))\n"
        "out.to_json(sys.argv[2], orient='split', double_precision=15)\n"
    )
    subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "rows.csv"), str(tmp_path / "out.json")],
        check=True,
        cwd=tmp_path,
        timeout=300,
    )
    output = pd.read_json(tmp_path / "out.json", orient="split")
    assert list(output["prediction"]) == list(in_process.predict(rows))
    probabilities = output[[f"probability_{c}" for c in in_process.classes]].to_numpy()
    np.testing.assert_allclose(probabilities, expected, rtol=0, atol=1e-12)


async def _task_run_counts(flow_run_id: str) -> dict[str, int]:
    async with get_client() as client:
        task_runs = await client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
    return {
        run.task_key.split("-")[0] + run.name.rsplit("-", 1)[0]: run.run_count for run in task_runs
    }


def test_bad_input_fails_fast_without_retries_or_tracking(mlflow_uri: str, tmp_path: Path) -> None:
    # Given a CSV without the named target column
    path = tmp_path / "data.csv"
    path.write_text("a,b,label\n1,2,x\n3,4,y\n")
    dataset = DatasetConfig(path=str(path), target="class")

    # When the flow runs, then it fails with the typed error
    state = train(dataset=dataset, return_state=True)
    assert state.is_failed()
    with pytest.raises(DatasetError, match="target column 'class' not found"):
        state.result()

    # And the failing task ran once (no retries), and no MLflow run was opened
    import asyncio

    counts = asyncio.run(_task_run_counts(str(state.state_details.flow_run_id)))
    load_runs = [count for name, count in counts.items() if "load-dataset" in name]
    assert load_runs == [1]
    client = MlflowClient(mlflow_uri)
    experiment = client.get_experiment_by_name("qmlops")
    assert experiment is None or not client.search_runs([experiment.experiment_id])


def test_cli_rejects_out_of_range_options(capsys: pytest.CaptureFixture[str]) -> None:
    from qmlops_cli import main

    assert main(["train", "--qubits", "0"]) == 2
    assert "--qubits: Input should be greater than or equal to 1" in capsys.readouterr().err
    assert main(["train", "--maxiter", "0"]) == 2


def test_cli_reports_a_missing_file(mlflow_uri: str, capsys: pytest.CaptureFixture[str]) -> None:
    from qmlops_cli import main

    assert main(["train", "--data", "nowhere.csv", "--target", "y"]) == 2
    assert "data file not found" in capsys.readouterr().err


# The bar: test accuracy >= 0.90 for both with default settings (qubits from the data:
# 4 for iris, 8 for breast_cancer; the ansatz depth follows the width).
@pytest.mark.slow
@pytest.mark.parametrize(
    ("dataset", "n_qubits", "floor"), [("iris", 4, 0.90), ("breast_cancer", 8, 0.90)]
)
def test_default_settings_reach_the_quality_bar(
    mlflow_uri: str, dataset: str, n_qubits: int, floor: float
) -> None:
    result = train(
        dataset=DatasetConfig(name=dataset), tracking=TrackingConfig(register_model=False)
    )
    assert result["metrics"]["quantum"]["accuracy"] >= floor
    params = MlflowClient(mlflow_uri).get_run(result["run_id"]).data.params
    assert params["circuit.n_qubits"] == str(n_qubits)
    assert params["dataset.encoding_scale"] == ("2.2" if n_qubits <= 4 else "1.0")
