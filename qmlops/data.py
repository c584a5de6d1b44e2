"""Datasets: built-in ones and user files, validated and fingerprinted.

Every dataset is checked before anything is simulated (see :class:`~qmlops.errors.DatasetError`)
and gets a content fingerprint, a SHA-256 over its feature values, column names and labels,
recorded with every run so that results are comparable only on identical data.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import get_args

import numpy as np
import pandas as pd
from sklearn import datasets as sk_datasets

from qmlops.config import DatasetConfig, DatasetName
from qmlops.errors import DatasetError, UnsafePathError

BUILTIN_DATASETS: tuple[str, ...] = get_args(DatasetName)
FILE_SUFFIXES = (".csv", ".parquet", ".pq")


@dataclass(frozen=True)
class Dataset:
    """A validated labelled dataset.

    Attributes:
        name: Built-in name or the file name.
        features: Feature matrix ``(n_samples, n_features)`` of floats.
        labels: Class labels ``(n_samples,)`` (numbers or strings).
        feature_names: Column names of ``features``.
        target: Name of the label column.
        fingerprint: SHA-256 of the content.
        source: ``"builtin"`` or the file path.
    """

    name: str
    features: np.ndarray
    labels: np.ndarray
    feature_names: tuple[str, ...]
    target: str
    fingerprint: str
    source: str

    @property
    def n_classes(self) -> int:
        """Number of distinct labels."""
        return int(np.unique(self.labels).shape[0])

    def frame(self) -> pd.DataFrame:
        """The features as a DataFrame with their column names."""
        return pd.DataFrame(self.features, columns=list(self.feature_names))


def fingerprint(features: np.ndarray, labels: np.ndarray, feature_names: tuple[str, ...]) -> str:
    """Content hash of a dataset, independent of where it came from.

    Args:
        features: Float feature matrix.
        labels: Labels.
        feature_names: Column names.

    Returns:
        Hex SHA-256 digest.
    """
    digest = hashlib.sha256()
    digest.update(json.dumps(list(feature_names)).encode())
    digest.update(str(features.shape).encode())
    digest.update(np.ascontiguousarray(features, dtype=np.float64).tobytes())
    digest.update(json.dumps([str(label) for label in labels.tolist()]).encode())
    return digest.hexdigest()


_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*:")


def resolve_data_path(path: str, data_root: str | Path) -> Path:
    """Resolve a user-supplied data path, refusing anything that leaves the data root.

    Relative paths are taken from the root. Refused: URLs and schemes (``file://``,
    ``s3://``, ``C:``), percent-encoded names (``%2e%2e``), NUL bytes, ``..`` components,
    absolute paths outside the root, and symlinks (anywhere on the path) that resolve
    outside it.

    Args:
        path: The path as the user gave it.
        data_root: The only folder user files may be read from.

    Returns:
        The resolved path inside the root (it may not exist).

    Raises:
        UnsafePathError: For any of the refused forms.
    """
    if "\x00" in path:
        raise UnsafePathError("data path contains a NUL byte")
    if _SCHEME.match(path) or "://" in path:
        raise UnsafePathError(f"data path must be a plain file path, not a URL: {path!r}")
    if urllib.parse.unquote(path) != path:
        raise UnsafePathError(f"percent-encoded data paths are not accepted: {path!r}")
    candidate = Path(path)
    if ".." in candidate.parts:
        raise UnsafePathError(f"data path may not contain '..': {path!r}")
    root = Path(data_root).resolve()
    resolved = (root / candidate).resolve()
    if not resolved.is_relative_to(root):
        raise UnsafePathError(
            f"data path {path!r} is outside the data root {root} "
            "(set QMLOPS_DATA_ROOT to allow another folder)"
        )
    return resolved


def load_dataset(config: DatasetConfig, data_root: str | Path | None = None) -> Dataset:
    """Load and validate the dataset a configuration names.

    Args:
        config: Dataset configuration (a file ``path`` with ``target``, else a built-in ``name``).
        data_root: If given, a file ``path`` must lie inside this folder (see
            :func:`resolve_data_path`); relative paths are taken from it.

    Returns:
        The validated dataset.

    Raises:
        DatasetError: If the data cannot be read or are unfit for classification.
        UnsafePathError: If the path leaves ``data_root``.
    """
    if config.path is not None:
        if not config.target:
            raise DatasetError("a target column is required with a data file")
        path = Path(config.path)
        if data_root is not None:
            path = resolve_data_path(config.path, data_root)
        return load_file(path, config.target)
    return load_builtin(config.name, n_samples=config.n_samples, seed=0)


def load_builtin(name: str, *, n_samples: int = 200, seed: int = 0) -> Dataset:
    """Load a built-in dataset.

    Args:
        name: One of :data:`BUILTIN_DATASETS`.
        n_samples: Samples generated for the synthetic sets (moons, circles, ad_hoc).
        seed: Seed of the synthetic generators.

    Returns:
        The dataset.

    Raises:
        DatasetError: For an unknown name.
    """
    if name not in BUILTIN_DATASETS:
        raise DatasetError(f"unknown dataset {name!r}; choose one of {', '.join(BUILTIN_DATASETS)}")
    if name in ("iris", "wine", "breast_cancer"):
        bunch = getattr(sk_datasets, f"load_{name}")()
        features = np.asarray(bunch.data, dtype=np.float64)
        labels = np.asarray(bunch.target_names)[bunch.target]
        names = tuple(str(n) for n in bunch.feature_names)
    elif name == "moons":
        features, target = sk_datasets.make_moons(n_samples=n_samples, noise=0.1, random_state=seed)
        labels, names = target, ("x0", "x1")
    elif name == "circles":
        features, target = sk_datasets.make_circles(
            n_samples=n_samples, noise=0.05, factor=0.5, random_state=seed
        )
        labels, names = target, ("x0", "x1")
    else:
        features, labels = _ad_hoc(n_samples, seed)
        names = ("x0", "x1")
    return _validated(name, features, np.asarray(labels), names, "label", "builtin")


def _ad_hoc(n_samples: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from qiskit_machine_learning.datasets import ad_hoc_data
    from qiskit_machine_learning.utils import algorithm_globals

    algorithm_globals.random_seed = seed
    per_class = max(2, n_samples // 2)
    generated = ad_hoc_data(
        training_size=per_class,
        test_size=0,
        n=2,
        gap=0.3,  # type: ignore[arg-type]  # annotated int, documented and used as a float
        plot_data=False,
        one_hot=False,
    )
    train_x, train_y = generated[0], generated[1]
    return np.asarray(train_x, dtype=np.float64), np.asarray(train_y).astype(int)


def load_file(path: Path, target: str) -> Dataset:
    """Load a CSV or Parquet file with a label column.

    Args:
        path: File path (``.csv``, ``.parquet`` or ``.pq``).
        target: Name of the label column; every other column must be numeric.

    Returns:
        The dataset.

    Raises:
        DatasetError: If the file is missing, empty, ragged, lacks the target column, has
            non-numeric feature columns or NaN/infinite values.
    """
    frame = read_table(path)
    if target not in frame.columns:
        raise DatasetError(
            f"target column {target!r} not found in {path.name}; columns: {list(frame.columns)}"
        )
    labels = frame[target]
    if labels.isna().any():
        raise DatasetError(f"target column {target!r} has missing labels")
    feature_frame = frame.drop(columns=[target])
    if feature_frame.shape[1] == 0:
        raise DatasetError(f"{path.name} has no feature columns besides {target!r}")
    non_numeric = non_numeric_columns(feature_frame)
    if non_numeric:
        raise DatasetError(f"non-numeric feature columns in {path.name}: {non_numeric}")
    features = feature_frame.to_numpy(dtype=np.float64)
    names = tuple(str(c) for c in feature_frame.columns)
    return _validated(path.name, features, labels.to_numpy(), names, target, str(path))


def read_table(path: Path) -> pd.DataFrame:
    """Read a CSV or Parquet file into a DataFrame, refusing unreadable or empty files.

    Args:
        path: File path (``.csv``, ``.parquet`` or ``.pq``).

    Returns:
        The table, with at least one row.

    Raises:
        DatasetError: If the file is missing, of another type, empty, ragged or unparsable.
    """
    if not path.is_file():
        raise DatasetError(f"data file not found: {path}")
    suffix = path.suffix.lower()
    if suffix not in FILE_SUFFIXES:
        raise DatasetError(f"unsupported data file type {suffix!r}; use CSV or Parquet")
    if path.stat().st_size == 0:
        raise DatasetError(f"data file is empty: {path}")
    if suffix == ".csv":
        _check_csv_shape(path)
        try:
            frame = pd.read_csv(path)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
            raise DatasetError(f"cannot parse {path.name}: {error}") from None
    else:
        try:
            frame = pd.read_parquet(path)
        except Exception as error:  # pyarrow raises several unrelated types
            raise DatasetError(f"cannot read Parquet file {path.name}: {error}") from None
    if frame.shape[0] == 0:
        raise DatasetError(f"data file has no rows: {path}")
    return frame


def non_numeric_columns(frame: pd.DataFrame) -> list[str]:
    """Names of the columns that are not numeric features (booleans and text included)."""
    return [
        str(c)
        for c in frame.columns
        if not pd.api.types.is_numeric_dtype(frame[c]) or pd.api.types.is_bool_dtype(frame[c])
    ]


def _check_csv_shape(path: Path) -> None:
    with path.open(newline="", encoding="utf-8", errors="replace") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if not header or not any(cell.strip() for cell in header):
            raise DatasetError(f"data file has no header row: {path}")
        for line_number, row in enumerate(reader, start=2):
            if row and len(row) != len(header):
                raise DatasetError(
                    f"ragged rows in {path.name}: line {line_number} has {len(row)} fields, "
                    f"the header has {len(header)}"
                )


def _validated(
    name: str,
    features: np.ndarray,
    labels: np.ndarray,
    feature_names: tuple[str, ...],
    target: str,
    source: str,
) -> Dataset:
    bad = ~np.isfinite(features)
    if bad.any():
        columns = sorted({feature_names[j] for j in np.flatnonzero(bad.any(axis=0))})
        raise DatasetError(f"NaN or infinite values in feature columns {columns} of {name}")
    n_classes = np.unique(labels).shape[0]
    if n_classes < 2:
        raise DatasetError(f"{name} holds a single class; classification needs at least 2")
    if labels.dtype.kind not in "iub":
        labels = labels.astype(str)
    return Dataset(
        name=name,
        features=features,
        labels=labels,
        feature_names=feature_names,
        target=target,
        fingerprint=fingerprint(features, labels, feature_names),
        source=source,
    )
