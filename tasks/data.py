"""Data tasks: load and preprocess."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from prefect import task
from prefect.cache_policies import NO_CACHE
from sklearn.pipeline import Pipeline

from qmlops import data as core_data
from qmlops.config import DatasetConfig, resolve_encoding
from qmlops.hashing import array_digest
from qmlops.preprocessing import Splits, make_preprocessor, split_dataset
from tasks.retry import retrying_task


@dataclass(frozen=True)
class PreparedData:
    """Encoded splits plus the fitted preprocessor that produced them.

    ``fingerprint`` digests the encoded arrays and labels: it keys the cached training and
    the checkpoints of anything trained on these data.
    """

    raw: Splits
    preprocessor: Pipeline
    X_train: np.ndarray
    X_test: np.ndarray
    X_val: np.ndarray | None
    fingerprint: str = ""


DATA_ROOT_ENV = "QMLOPS_DATA_ROOT"


_CONFINED: ContextVar[bool] = ContextVar("qmlops_data_confined", default=True)


def data_root() -> Path:
    """The only folder user data files are read from: ``$QMLOPS_DATA_ROOT``, else the cwd."""
    return Path(os.environ.get(DATA_ROOT_ENV) or Path.cwd())


def confined_root() -> Path | None:
    """The folder data paths must stay in, or None inside :func:`files_anywhere`."""
    return data_root() if _CONFINED.get() else None


@contextmanager
def files_anywhere() -> Iterator[None]:
    """Read the data files named in this block wherever this process may read them.

    For the command line, where the files are the user's own. Runs that come through a
    server (deployments, the UI, the API) never enter it and stay confined to
    :func:`data_root`.
    """
    token = _CONFINED.set(False)
    try:
        yield
    finally:
        _CONFINED.reset(token)


@retrying_task
def load_dataset(config: DatasetConfig) -> core_data.Dataset:
    """Load and validate the configured dataset (user files only from :func:`data_root`).

    Not cached: reading the data is what tells whether they changed (the fingerprint that
    keys every later cached step).
    """
    return core_data.load_dataset(config, data_root=confined_root())


@task(name="preprocess-features", retries=0, cache_policy=NO_CACHE)
def preprocess_features(
    dataset: core_data.Dataset, config: DatasetConfig, n_qubits: int, random_state: int
) -> PreparedData:
    """Split (stratified) and fit the angle encoder on the training split only.

    An empty ``encoding_scale`` takes :func:`~qmlops.config.default_encoding_scale` of
    ``n_qubits`` (the flows resolve it before logging; this keeps every caller on one rule).
    """
    encoding_scale = resolve_encoding(config, n_qubits).encoding_scale
    assert encoding_scale is not None
    splits = split_dataset(
        dataset,
        test_size=config.test_size,
        validation_size=config.validation_size,
        random_state=random_state,
    )
    preprocessor = make_preprocessor(splits.X_train.shape[1], n_qubits, encoding_scale)
    X_train = preprocessor.fit_transform(splits.X_train)
    X_val = None if splits.X_val is None else preprocessor.transform(splits.X_val)
    X_test = preprocessor.transform(splits.X_test)
    return PreparedData(
        raw=splits,
        preprocessor=preprocessor,
        X_train=X_train,
        X_test=X_test,
        X_val=X_val,
        fingerprint=array_digest(
            X_train, X_test, X_val, splits.y_train, splits.y_test, splits.y_val
        ),
    )
