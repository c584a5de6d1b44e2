"""The ``score`` flow: a registered model (the champion by default) scores a batch file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run

from qmlops.config import ScoringConfig
from qmlops.scoring import check_output_path, write_table
from tasks.scoring import (
    check_input_columns,
    predict_batch,
    read_scoring_input,
    sample_training_data,
)
from tasks.tracking import (
    flow_run_tags,
    load_registered_model,
    log_predictions,
    prepare_tracking,
    tracked_run,
)


@flow(name="score", log_prints=True)
def score(scoring: ScoringConfig = ScoringConfig()) -> dict[str, Any]:  # noqa: B008 - frozen
    """Score a CSV or Parquet file with a registered model and record the run in MLflow.

    Args:
        scoring: Input file (default: the features of the built-in dataset the model was
            trained on), model name and version (default: the `champion` alias), output file
            and MLflow experiment.

    Returns:
        The MLflow run id, the model URI used, the row count and where predictions went.

    Raises:
        qmlops.SchemaMismatchError: When the input's columns do not match the model's signature.
        qmlops.ModelNotFoundError: When the model, version or champion alias does not exist.
    """
    if scoring.output_path is not None:
        check_output_path(scoring.output_path)
    given = scoring.input_path
    frame = None if given is None else read_scoring_input(given)
    model = load_registered_model(scoring.tracking_uri, scoring.model_name, scoring.model_version)
    if frame is None:
        frame = sample_training_data(scoring.tracking_uri, model.name, model.version)
    features = check_input_columns(frame, model.input_columns)
    predictions = predict_batch(model.pyfunc, features)

    prepare_tracking(scoring.tracking_uri, scoring.experiment)
    with tracked_run(
        scoring.tracking_uri,
        scoring.experiment,
        run_name=str(flow_run.name or "score"),
        tags=flow_run_tags("score", model_uri=model.uri),
    ) as run:
        artifact = log_predictions(
            run,
            {
                "model_name": model.name,
                "model_version": model.version,
                "input_path": "" if given is None else str(Path(given).resolve()),
                "output_path": scoring.output_path or "",
            },
            predictions,
            "predictions.csv",
        )
        if scoring.output_path is not None:
            write_table(predictions, scoring.output_path)
        create_markdown_artifact(
            markdown=(
                f"## Scored {len(predictions)} rows with {model.uri}\n\n"
                f"- **input**: {given or 'the built-in dataset the model was trained on'}\n"
                f"- **MLflow run**: {run.run_id} in {run.tracking_uri} (`{artifact}`)\n"
                f"- **output file**: {scoring.output_path or 'none'}\n"
            ),
            key="score-summary",
            description="qmlops batch scoring",
        )
    return {
        "run_id": run.run_id,
        "tracking_uri": run.tracking_uri,
        "model_uri": model.uri,
        "model_version": model.version,
        "n_rows": len(predictions),
        "predictions_artifact": artifact,
        "output_path": scoring.output_path,
    }
