"""Scoring tasks: read the batch, check it against the model's signature, predict."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE

from qmlops.data import load_builtin, read_table, resolve_data_path
from qmlops.errors import DatasetError
from qmlops.scoring import match_signature
from tasks.data import confined_root
from tasks.retry import retrying_task
from tasks.tracking import training_run_params


@retrying_task
def read_scoring_input(path: str) -> pd.DataFrame:
    """Read the CSV or Parquet file to score; like training data, only from the data root.

    Raises:
        UnsafePathError: When the path leaves ``$QMLOPS_DATA_ROOT`` (default: the cwd),
            except inside :func:`tasks.data.files_anywhere`.
    """
    root = confined_root()
    return read_table(Path(path) if root is None else resolve_data_path(path, root))


@task(name="check-input-columns", retries=0, cache_policy=NO_CACHE)
def check_input_columns(frame: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """Refuse input whose columns do not match the model's signature (never retried)."""
    return match_signature(frame, columns)


@task(name="predict-batch", retries=0, cache_policy=NO_CACHE)
def predict_batch(model: Any, features: pd.DataFrame) -> pd.DataFrame:
    """Predict with a loaded pyfunc model: the features plus prediction and probabilities."""
    predictions = pd.DataFrame(model.predict(features)).reset_index(drop=True)
    return pd.concat([features.reset_index(drop=True), predictions], axis=1)


@retrying_task
def sample_training_data(tracking_uri: str | None, model_name: str, version: str) -> pd.DataFrame:
    """The features of the built-in dataset a model version was trained on (a demo batch).

    What a scoring run without an input file scores, so a fresh deployment's Quick run works.

    Raises:
        DatasetError: When the version was trained on a file: name the file to score.
    """
    params = training_run_params(tracking_uri, model_name, version)
    if params.get("dataset.source", "builtin") != "builtin" or params.get("dataset.path"):
        raise DatasetError(
            f"{model_name} v{version} was trained on a data file, not a built-in dataset: "
            "give the file to score (scoring.input_path)"
        )
    name = params.get("dataset.name", "")
    n_samples = int(params.get("dataset.n_samples") or 200)
    return load_builtin(name, n_samples=n_samples).frame()
