"""The champion gate in the registry and the score flow: real Prefect engine, real MLflow store."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pandas as pd
import pytest
from flow_params import small_train
from mlflow import MlflowClient
from mlflow.artifacts import download_artifacts
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

from flows.score import score
from flows.train import train
from qmlops.config import (
    PromotionConfig,
    ScoringConfig,
    TrackingConfig,
)
from qmlops.data import load_builtin
from qmlops.errors import ModelNotFoundError, SchemaMismatchError, UnsafePathError

pytestmark = pytest.mark.usefixtures("prefect_harness")

MODEL = "gate-test"
ANY_BASELINE = PromotionConfig(require_beat_baseline=False)


def _aliases(client: MlflowClient) -> dict[str, str]:
    return {alias: str(v) for alias, v in client.get_registered_model(MODEL).aliases.items()}


def _train(maxiter: int, promotion: PromotionConfig = ANY_BASELINE) -> dict:
    small = small_train(60, TrackingConfig(model_name=MODEL), maxiter=maxiter, random_state=7)
    return train(**small, promotion=promotion)


def test_champion_moves_only_to_a_better_version_and_score_uses_it(
    mlflow_uri: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    client = MlflowClient(mlflow_uri)

    # Given a first model: no champion yet, so it becomes the champion
    first = _train(maxiter=1)
    assert first["promotion"]["promotion.promote"] == "True"
    assert _aliases(client) == {"champion": "1"}
    tags = client.get_run(first["run_id"]).data.tags
    assert tags["promotion.candidate"] == str(first["metrics"]["quantum"]["accuracy"])
    assert tags["promotion.champion"] == ""

    # When the same training runs again it ties, so the champion stays; version 2 still exists
    same = _train(maxiter=1)
    assert same["registered_version"] == "2"
    assert same["promotion"]["promotion.promote"] == "False"
    assert _aliases(client) == {"champion": "1"}
    tags = client.get_run(same["run_id"]).data.tags
    assert tags["promotion.champion"] == tags["promotion.candidate"]
    assert tags["promotion.champion_version"] == "1"

    # And a model that must also beat the baseline by an impossible margin does not move it
    strict = _train(maxiter=1, promotion=PromotionConfig(margin=1.0))
    assert strict["promotion"]["promotion.promote"] == "False"
    assert _aliases(client) == {"champion": "1"}

    # Then scoring without a version uses the champion and records a run with the predictions
    frame = load_builtin("moons", n_samples=30).frame()
    frame.to_csv(tmp_path / "batch.csv", index=False)
    result = score(
        ScoringConfig(
            input_path=str(tmp_path / "batch.csv"),
            model_name=MODEL,
            output_path=str(tmp_path / "scored.parquet"),
        )
    )
    assert result["model_uri"] == f"models:/{MODEL}/1"
    written = pd.read_parquet(tmp_path / "scored.parquet")
    assert len(written) == 30
    assert {"x0", "x1", "prediction", "probability_0", "probability_1"} <= set(written.columns)
    run = client.get_run(result["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["model_version"] == "1"
    assert run.data.metrics["n_rows"] == 30
    logged = pd.read_csv(
        download_artifacts(
            run_id=result["run_id"],
            artifact_path=result["predictions_artifact"],
            tracking_uri=mlflow_uri,
        )
    )
    assert list(logged["prediction"]) == list(written["prediction"])

    # And a given version is honoured
    assert (
        score(
            ScoringConfig(input_path=str(tmp_path / "batch.csv"), model_name=MODEL, model_version=2)
        )["model_version"]
        == "2"
    )

    # And the CLI scores the same way, and names a column mismatch with exit status 2
    from qmlops_cli import main

    assert main(["score", "--input", str(tmp_path / "batch.csv"), "--model-name", MODEL]) == 0
    frame.rename(columns={"x1": "y"}).to_csv(tmp_path / "renamed.csv", index=False)
    assert main(["score", "--input", str(tmp_path / "renamed.csv"), "--model-name", MODEL]) == 2
    assert "SchemaMismatchError" in capsys.readouterr().err


async def _run_counts(flow_run_id: str) -> dict[str, int]:
    async with get_client() as client:
        runs = await client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
    return {run.name.rsplit("-", 1)[0]: run.run_count for run in runs}


def test_score_rejects_columns_that_do_not_match_the_signature(
    mlflow_uri: str, tmp_path: Path
) -> None:
    _train(maxiter=1)
    pd.DataFrame({"x0": [0.1], "height": [1.0]}).to_csv(tmp_path / "bad.csv", index=False)

    state = score(
        ScoringConfig(input_path=str(tmp_path / "bad.csv"), model_name=MODEL), return_state=True
    )

    assert state.is_failed()
    with pytest.raises(SchemaMismatchError, match=r"missing \['x1'\], unexpected \['height'\]"):
        state.result()
    counts = asyncio.run(_run_counts(str(state.state_details.flow_run_id)))
    assert counts["check-input-columns"] == 1
    assert "predict-batch" not in counts
    experiment = MlflowClient(mlflow_uri).get_experiment_by_name("qmlops-scoring")
    assert experiment is None


def test_score_without_a_champion_is_a_typed_error(mlflow_uri: str, tmp_path: Path) -> None:
    pd.DataFrame({"x0": [0.1], "x1": [1.0]}).to_csv(tmp_path / "batch.csv", index=False)
    with pytest.raises(ModelNotFoundError, match="no registered model"):
        score(ScoringConfig(input_path=str(tmp_path / "batch.csv"), model_name="nothing-here"))


def test_score_reads_only_from_the_data_root(mlflow_uri: str, tmp_path: Path) -> None:
    outside = tmp_path.parent / "outside.csv"
    pd.DataFrame({"x0": [0.1], "x1": [1.0]}).to_csv(outside, index=False)
    # Refused before any model is looked up, so the missing model never matters
    with pytest.raises(UnsafePathError, match="outside the data root"):
        score(ScoringConfig(input_path=str(outside), model_name="nothing-here"))


def test_a_tampered_model_artifact_never_becomes_champion(mlflow_uri: str) -> None:
    from tasks.tracking import LoggedModel, TrackedRun, promote_model

    client = MlflowClient(mlflow_uri)
    # Given a registered version whose stored model document is altered after logging
    first = _train(maxiter=1)
    run = client.get_run(first["run_id"])
    model_id = first["model_uri"].removeprefix("models:/")
    location = Path(client.get_logged_model(model_id).artifact_location.removeprefix("file://"))
    (document,) = location.glob("artifacts/*.json")
    document.write_text(document.read_text().replace('"weights": [', '"weights": [0.5, ', 1))
    client.delete_registered_model_alias(MODEL, "champion")

    # When the gate runs for it again, with no champion in the way
    decision = promote_model.fn(
        TrackedRun(mlflow_uri, run.info.experiment_id, run.info.run_id),
        LoggedModel(first["model_uri"], MODEL, first["registered_version"]),
        {"quantum": {"metrics": first["metrics"]["quantum"]}},
        run.data.tags["dataset.fingerprint"],
        ANY_BASELINE,
    )

    # Then it refuses, says why, and the alias stays unset
    assert not decision.promote
    assert "failed verification" in decision.reason
    assert _aliases(client) == {}
    assert client.get_run(run.info.run_id).data.tags["promotion.promote"] == "False"
