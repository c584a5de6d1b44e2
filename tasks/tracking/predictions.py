"""Logging a scoring run: its parameters, row count and predictions file."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import pandas as pd
from mlflow.entities import Metric, Param

from tasks.retry import retrying_task
from tasks.tracking.store import TrackedRun


@retrying_task
def log_predictions(
    run: TrackedRun, params: dict[str, str], predictions: pd.DataFrame, file_name: str
) -> str:
    """Record a scoring run: its parameters, the row count and the predictions file.

    Returns:
        The artifact path of the predictions inside the run.
    """
    client = run.client()
    client.log_batch(
        run.run_id,
        params=[Param(key, value[:6000]) for key, value in params.items()],
        metrics=[Metric("n_rows", float(len(predictions)), int(time.time() * 1000), 0)],
    )
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / file_name
        predictions.to_csv(path, index=False)
        client.log_artifact(run.run_id, str(path), artifact_path="predictions")
    return f"predictions/{file_name}"
