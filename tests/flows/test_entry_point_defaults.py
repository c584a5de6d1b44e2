"""Entry points with their defaults: flows, the score deployment's input and the CLI's errors."""

from __future__ import annotations

import os

import pytest
from mlflow import MlflowClient
from services import run_qmlops

from flows.score import score
from flows.train import train
from qmlops.config import DatasetConfig, ScoringConfig, TrainingConfig
from tasks.tracking import EXPERIMENT_KIND_TAG, MODEL_TRAINING_KIND, prepare_store

pytestmark = pytest.mark.usefixtures("prefect_harness")

QUICK = TrainingConfig(maxiter=2, batch_size=None, random_state=3)


def test_a_dataset_changed_alone_trains_registers_its_own_model_and_scores(
    mlflow_uri: str,
) -> None:
    client = MlflowClient(mlflow_uri)
    # Given an iris champion, as the nightly deployment leaves it
    iris = train(dataset=DatasetConfig(name="iris"), training=QUICK)
    assert iris["registered_model"] == "qmlops-iris"

    # When only the dataset changes (as in the Run form): 2 features, so 2 qubits
    moons = train(dataset=DatasetConfig(name="moons", n_samples=40), training=QUICK)

    # Then it runs, under its own model name, and becomes that model's champion even when the
    # classical baselines do better (the comparison is reported, not blocking)
    params = client.get_run(moons["run_id"]).data.params
    assert params["circuit.n_qubits"] == "2"
    assert params["tracking.model_name"] == "qmlops-moons"
    assert moons["registered_model"] == "qmlops-moons"
    assert moons["promotion"]["promotion.promote"] == "True"
    assert moons["promotion"]["promotion.baseline_name"]
    assert client.get_registered_model("qmlops-moons").aliases["champion"] == 1
    assert [v.version for v in client.search_model_versions("name = 'qmlops-iris'")] == [1]

    # And the score deployment's defaults (no input file) score the iris champion's data
    scored = score(ScoringConfig())
    assert scored["model_uri"] == "models:/qmlops-iris/1"
    assert scored["n_rows"] == 150
    moons_scored = score(ScoringConfig(model_name="qmlops-moons"))
    assert moons_scored["n_rows"] == 40


def test_qmlops_experiments_open_as_model_training_in_the_mlflow_ui(mlflow_uri: str) -> None:
    client = MlflowClient(mlflow_uri)
    created = prepare_store(mlflow_uri, "fresh")
    assert client.get_experiment(created).tags[EXPERIMENT_KIND_TAG] == MODEL_TRAINING_KIND
    # An experiment created before the tag existed gets it the next time a flow uses it
    older = client.create_experiment("older")
    prepare_store(mlflow_uri, "older")
    assert client.get_experiment(older).tags[EXPERIMENT_KIND_TAG] == MODEL_TRAINING_KIND
    # A kind someone chose is kept
    chosen = client.create_experiment("chosen", tags={EXPERIMENT_KIND_TAG: "finetuning"})
    prepare_store(mlflow_uri, "chosen")
    assert client.get_experiment(chosen).tags[EXPERIMENT_KIND_TAG] == "finetuning"


@pytest.mark.slow
def test_the_cli_reads_files_anywhere_and_reports_bad_input_in_one_line(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    # Given a CSV with a NaN outside the working directory (the data root of server-side runs),
    # and PREFECT_API_URL set but empty
    elsewhere = tmp_path_factory.mktemp("elsewhere") / "data.csv"
    elsewhere.write_text("a,b,y\n1,2,0\nnan,3,1\n4,5,0\n6,7,1\n")
    workdir = tmp_path_factory.mktemp("workdir")
    env = {
        **os.environ,
        "PREFECT_API_URL": "",
        "PREFECT_HOME": str(workdir / "prefect-home"),
        "MLFLOW_TRACKING_URI": f"sqlite:///{workdir / 'mlflow.db'}",
    }
    env.pop("QMLOPS_DATA_ROOT", None)

    # When the CLI trains on it
    completed = run_qmlops(["train", "--data", str(elsewhere), "--target", "y"], env, workdir)

    # Then the file was read (its NaN found, no UnsafePathError) and one line says so, exit 2
    output = completed.stdout + completed.stderr
    assert completed.returncode == 2, output[-4000:]
    assert "Traceback" not in output
    assert [line for line in output.splitlines() if line.startswith("qmlops:")] == [
        "qmlops: DatasetError: NaN or infinite values in feature columns ['a'] of data.csv"
    ]
    # And the empty API URL counted as unset: no failing events worker on any task
    assert "EventsWorker" not in output
    assert "Error emitting event" not in output


def test_the_console_filter_drops_only_bad_input_failures() -> None:
    import logging

    from qmlops.errors import DatasetError
    from qmlops_cli import _InputErrorFilter

    def record(
        name: str, level: int, message: str, error: BaseException | None
    ) -> logging.LogRecord:
        exc_info = None if error is None else (type(error), error, None)
        return logging.LogRecord(name, level, __file__, 1, message, None, exc_info)

    quiet = _InputErrorFilter()
    bad = DatasetError("NaN in a")
    assert not quiet.filter(record("prefect.task_runs", logging.ERROR, "failed", bad))
    assert not quiet.filter(
        record("prefect.flow_runs", logging.ERROR, "Finished: DatasetError: NaN in a", None)
    )
    # Other failures and other records still reach the console
    assert quiet.filter(record("prefect.task_runs", logging.ERROR, "failed", OSError("disk")))
    assert quiet.filter(record("prefect.task_runs", logging.INFO, "Finished in state", None))
