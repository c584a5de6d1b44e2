"""Scoring tasks: read the batch, check it against the model's signature, predict."""

from __future__ import annotations

from typing import Any

import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE

from qmlops.data import read_table, resolve_data_path
from qmlops.scoring import match_signature
from tasks.data import data_root
from tasks.retry import retrying_task


@retrying_task
def read_scoring_input(path: str) -> pd.DataFrame:
    """Read the CSV or Parquet file to score; like training data, only from the data root.

    Raises:
        UnsafePathError: When the path leaves ``$QMLOPS_DATA_ROOT`` (default: the cwd).
    """
    return read_table(resolve_data_path(path, data_root()))


@task(name="check-input-columns", retries=0, cache_policy=NO_CACHE)
def check_input_columns(frame: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """Refuse input whose columns do not match the model's signature (never retried)."""
    return match_signature(frame, columns)


@task(name="predict-batch", retries=0, cache_policy=NO_CACHE)
def predict_batch(model: Any, features: pd.DataFrame) -> pd.DataFrame:
    """Predict with a loaded pyfunc model: the features plus prediction and probabilities."""
    predictions = pd.DataFrame(model.predict(features)).reset_index(drop=True)
    return pd.concat([features.reset_index(drop=True), predictions], axis=1)
