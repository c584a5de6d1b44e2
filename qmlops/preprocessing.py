"""Splitting and encoding: stratified splits and a leakage-free angle preprocessor.

The preprocessor standardises, reduces to ``n_qubits`` features with PCA when there are more
features than qubits, and rescales each feature to ``[0, encoding_scale]`` radians. It is fitted
on the training split only and serialises to plain numbers (no pickle).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.decomposition import PCA
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import MinMaxScaler, StandardScaler

from qmlops.data import Dataset
from qmlops.errors import ConfigurationError, DatasetError, ModelFormatError


@dataclass(frozen=True)
class Splits:
    """Raw (unscaled) train / validation / test splits."""

    X_train: np.ndarray
    y_train: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    X_val: np.ndarray | None = None
    y_val: np.ndarray | None = None


def split_dataset(
    dataset: Dataset,
    *,
    test_size: float,
    validation_size: float = 0.0,
    random_state: int = 0,
) -> Splits:
    """Stratified train/test (and optional validation) split.

    Args:
        dataset: The data.
        test_size: Fraction held out for the final test.
        validation_size: Fraction of the remaining training data held out for monitoring.
        random_state: Seed of the split.

    Returns:
        The splits.

    Raises:
        DatasetError: If a class has too few samples for the requested splits.
    """
    if not 0 < test_size < 1 or not 0 <= validation_size < 1:
        raise ConfigurationError("test_size must be in (0, 1) and validation_size in [0, 1)")
    labels, counts = np.unique(dataset.labels, return_counts=True)
    n_parts = 2 if validation_size == 0 else 3
    n_samples = dataset.labels.shape[0]
    smallest = int(counts.min())
    n_test = int(np.ceil(test_size * n_samples))
    n_train = n_samples - n_test
    n_val = int(np.ceil(validation_size * n_train)) if validation_size else 0
    if (
        smallest < n_parts
        or n_test < labels.shape[0]
        or (n_val and n_val < labels.shape[0])
        or n_train - n_val < labels.shape[0]
    ):
        rare = labels[counts.argmin()]
        raise DatasetError(
            f"class '{rare}' has {smallest} samples and {n_samples} samples in all: too few for "
            f"a stratified split into {n_parts} parts (test_size={test_size}, "
            f"validation_size={validation_size}); each part needs every class"
        )
    X_train, X_test, y_train, y_test = train_test_split(
        dataset.features,
        dataset.labels,
        test_size=test_size,
        stratify=dataset.labels,
        random_state=random_state,
    )
    if not validation_size:
        return Splits(X_train, y_train, X_test, y_test)
    X_train, X_val, y_train, y_val = train_test_split(
        X_train, y_train, test_size=validation_size, stratify=y_train, random_state=random_state
    )
    return Splits(X_train, y_train, X_test, y_test, X_val, y_val)


def make_preprocessor(n_features: int, n_qubits: int, encoding_scale: float) -> Pipeline:
    """Build the (unfitted) angle-encoding preprocessor.

    Args:
        n_features: Raw feature count.
        n_qubits: Target feature count.
        encoding_scale: Upper end of the angle range in radians.

    Returns:
        A scikit-learn pipeline: StandardScaler, PCA (if reducing), MinMaxScaler.

    Raises:
        ConfigurationError: If there are fewer features than qubits.
    """
    if n_qubits > n_features:
        raise ConfigurationError(
            f"n_qubits={n_qubits} exceeds the {n_features} features of the data; use at most "
            f"{n_features} qubits"
        )
    steps: list[tuple[str, Any]] = [("standardize", StandardScaler())]
    if n_features > n_qubits:
        steps.append(("reduce", PCA(n_components=n_qubits, random_state=0)))
    steps.append(("to_angles", MinMaxScaler(feature_range=(0.0, encoding_scale))))
    return Pipeline(steps)


def preprocessor_to_state(preprocessor: Pipeline) -> dict[str, Any]:
    """Serialise a fitted preprocessor to plain numbers."""
    scaler = preprocessor.named_steps["standardize"]
    angles = preprocessor.named_steps["to_angles"]
    state: dict[str, Any] = {
        "mean": scaler.mean_.tolist(),
        "scale": scaler.scale_.tolist(),
        "angle_scale": angles.scale_.tolist(),
        "angle_min": angles.min_.tolist(),
        "pca_mean": None,
        "pca_components": None,
    }
    if "reduce" in preprocessor.named_steps:
        pca = preprocessor.named_steps["reduce"]
        state["pca_mean"] = pca.mean_.tolist()
        state["pca_components"] = pca.components_.tolist()
    return state


class AngleEncoder:
    """Apply a serialised preprocessor with plain numpy.

    The inverse of :func:`preprocessor_to_state`: gives the same numbers as the fitted pipeline.

    Args:
        state: Output of :func:`preprocessor_to_state`.

    Raises:
        ModelFormatError: If the state is malformed.
    """

    def __init__(self, state: dict[str, Any]) -> None:
        try:
            self.mean = np.asarray(state["mean"], dtype=np.float64)
            self.scale = np.asarray(state["scale"], dtype=np.float64)
            self.angle_scale = np.asarray(state["angle_scale"], dtype=np.float64)
            self.angle_min = np.asarray(state["angle_min"], dtype=np.float64)
            self.pca_mean = (
                None if state["pca_mean"] is None else np.asarray(state["pca_mean"], np.float64)
            )
            self.pca_components = (
                None
                if state["pca_components"] is None
                else np.asarray(state["pca_components"], np.float64)
            )
        except (KeyError, TypeError, ValueError) as error:
            raise ModelFormatError(f"malformed preprocessor state: {error!r}") from None

    @property
    def n_features_in(self) -> int:
        """Raw features expected."""
        return int(self.mean.shape[0])

    def transform(self, X: np.ndarray) -> np.ndarray:
        """Map raw features to encoding angles.

        Raises:
            DatasetError: If ``X`` has the wrong width or non-finite values.
        """
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != self.n_features_in:
            raise DatasetError(f"expected {self.n_features_in} feature columns, got {X.shape}")
        if not np.all(np.isfinite(X)):
            raise DatasetError("input features hold NaN or infinite values")
        Z = (X - self.mean) / self.scale
        if self.pca_components is not None and self.pca_mean is not None:
            Z = (Z - self.pca_mean) @ self.pca_components.T
        return np.asarray(Z * self.angle_scale + self.angle_min)
