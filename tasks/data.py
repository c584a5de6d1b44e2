"""Data tasks: load and preprocess."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from prefect import task
from prefect.cache_policies import NO_CACHE
from sklearn.pipeline import Pipeline

from qmlops import data as core_data
from qmlops.config import DatasetConfig
from qmlops.preprocessing import Splits, make_preprocessor, split_dataset
from tasks.policy import RETRIES, RETRY_DELAY_SECONDS, retry_if_transient


@dataclass(frozen=True)
class PreparedData:
    """Encoded splits plus the fitted preprocessor that produced them."""

    raw: Splits
    preprocessor: Pipeline
    X_train: np.ndarray
    X_test: np.ndarray
    X_val: np.ndarray | None


@task(
    name="load-dataset",
    retries=RETRIES,
    retry_delay_seconds=RETRY_DELAY_SECONDS,
    retry_condition_fn=retry_if_transient,
    cache_policy=NO_CACHE,
)
def load_dataset(config: DatasetConfig) -> core_data.Dataset:
    """Load and validate the configured dataset."""
    return core_data.load_dataset(config)


@task(name="preprocess-features", retries=0, cache_policy=NO_CACHE)
def preprocess_features(
    dataset: core_data.Dataset, config: DatasetConfig, n_qubits: int, random_state: int
) -> PreparedData:
    """Split (stratified) and fit the angle encoder on the training split only."""
    splits = split_dataset(
        dataset,
        test_size=config.test_size,
        validation_size=config.validation_size,
        random_state=random_state,
    )
    preprocessor = make_preprocessor(splits.X_train.shape[1], n_qubits, config.encoding_scale)
    X_train = preprocessor.fit_transform(splits.X_train)
    X_val = None if splits.X_val is None else preprocessor.transform(splits.X_val)
    return PreparedData(
        raw=splits,
        preprocessor=preprocessor,
        X_train=X_train,
        X_test=preprocessor.transform(splits.X_test),
        X_val=X_val,
    )
