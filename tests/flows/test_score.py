"""The score flow against a real registry: Parquet input, the model's own predictions, and a
typed error for a missing champion, version or model, raised before anything is recorded.

One model is trained and registered for the module (real Prefect engine, real MLflow SQLite
store in a temporary folder that is also the data root).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from flow_params import small_train
from mlflow import MlflowClient
from mlflow.artifacts import download_artifacts
from prefect_runs import task_run_counts

from flows.score import score
from flows.train import train
from qmlops.classifier import QuantumClassifier
from qmlops.config import (
    PromotionConfig,
    ScoringConfig,
    TrackingConfig,
)
from qmlops.data import load_builtin
from qmlops.errors import ModelNotFoundError
from qmlops.preprocessing import AngleEncoder

MODEL = "score-test"


@dataclass(frozen=True)
class Registry:
    uri: str
    folder: Path
    trained: dict


@pytest.fixture(scope="module")
def registry(prefect_harness: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    folder = tmp_path_factory.mktemp("score")
    uri = f"sqlite:///{folder / 'mlruns' / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        patch.chdir(folder)  # the data root
        trained = train(
            **small_train(60, TrackingConfig(model_name=MODEL), random_state=5),
            promotion=PromotionConfig(require_beat_baseline=False),
        )
        assert MlflowClient(uri).get_registered_model(MODEL).aliases == {"champion": 1}
        yield Registry(uri, folder, trained)


def _own_predictions(registry: Registry, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Labels and probabilities from the trained model's document, without MLflow's loader."""
    path = download_artifacts(
        run_id=registry.trained["run_id"],
        artifact_path="model/model.json",
        tracking_uri=registry.uri,
    )
    body = json.loads(Path(path).read_text())["body"]
    angles = AngleEncoder(body["preprocessor"]).transform(
        frame[body["feature_names"]].to_numpy(dtype=np.float64)
    )
    classifier = QuantumClassifier.from_state(body["classifier"])
    return classifier.predict(angles), classifier.predict_proba(angles)


def test_a_parquet_batch_is_scored_with_the_models_own_predictions(registry: Registry) -> None:
    # Given a Parquet file whose columns come in another order and whose index is not 0..n-1
    frame = load_builtin("moons", n_samples=40, seed=11).frame()
    features = frame[["x1", "x0"]].set_axis(range(100, 140))
    features.to_parquet(registry.folder / "batch.parquet")

    # When the champion scores it (output written as Parquet too)
    result = score(
        ScoringConfig(
            input_path=str(registry.folder / "batch.parquet"),
            model_name=MODEL,
            output_path=str(registry.folder / "scored.parquet"),
        )
    )

    # Then every row has the prediction and probabilities the trained model itself gives
    assert result["model_version"] == "1"
    assert result["n_rows"] == 40
    scored = pd.read_parquet(registry.folder / "scored.parquet")
    labels, probabilities = _own_predictions(registry, features)
    assert len(set(labels)) == 2  # both classes occur, so a row mix-up would show
    np.testing.assert_array_equal(scored["prediction"].to_numpy(), labels)
    np.testing.assert_allclose(
        scored[["probability_0", "probability_1"]].to_numpy(), probabilities, rtol=0, atol=1e-12
    )
    np.testing.assert_array_equal(scored[["x0", "x1"]].to_numpy(), features[["x0", "x1"]])


def _refused(registry: Registry, config: ScoringConfig, message: str) -> None:
    """The score flow fails with ModelNotFoundError, once, and records no scoring run."""
    state = score(config, return_state=True)
    assert state.is_failed()
    with pytest.raises(ModelNotFoundError, match=message):
        state.result()
    assert task_run_counts(str(state.state_details.flow_run_id))["load-registered-model"] == 1
    client = MlflowClient(registry.uri)
    experiment = client.get_experiment_by_name(config.experiment)
    assert experiment is None or not client.search_runs([experiment.experiment_id])


@pytest.fixture
def batch(registry: Registry) -> str:
    path = registry.folder / "few.csv"
    pd.DataFrame({"x0": [0.1, 0.5], "x1": [1.0, -0.2]}).to_csv(path, index=False)
    return str(path)


def test_a_missing_champion_is_a_typed_error(registry: Registry, batch: str) -> None:
    client = MlflowClient(registry.uri)
    client.delete_registered_model_alias(MODEL, "champion")
    try:
        _refused(
            registry,
            ScoringConfig(input_path=batch, model_name=MODEL, experiment="no-champion"),
            "has no 'champion' alias yet",
        )
    finally:
        client.set_registered_model_alias(MODEL, "champion", "1")


def test_a_missing_version_is_a_typed_error(registry: Registry, batch: str) -> None:
    _refused(
        registry,
        ScoringConfig(input_path=batch, model_name=MODEL, model_version=9, experiment="no-v9"),
        f"no registered model {MODEL} version 9",
    )


def test_a_missing_model_is_a_typed_error(registry: Registry, batch: str) -> None:
    _refused(
        registry,
        ScoringConfig(input_path=batch, model_name="absent", experiment="no-model"),
        "no registered model absent in",
    )
