"""Tiny data sets shared by the core tests (kept small so the whole suite stays fast)."""

from __future__ import annotations

import numpy as np
from sklearn.datasets import make_classification

from qmlops.data import Dataset, fingerprint


def blobs(
    n_samples: int = 24, n_features: int = 2, n_classes: int = 2, random_state: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Well separated classes, features scaled to encoding angles in [0, 2.2]."""
    X, y = make_classification(
        n_samples=n_samples,
        n_features=n_features,
        n_informative=2,
        n_redundant=0,
        n_repeated=0,
        n_classes=n_classes,
        n_clusters_per_class=1,
        class_sep=5,
        random_state=random_state,
    )
    X = (X - X.min(axis=0)) / (X.max(axis=0) - X.min(axis=0)) * 2.2
    return X, y


def make_dataset(features: np.ndarray, labels: np.ndarray, name: str = "test") -> Dataset:
    """A :class:`Dataset` built from arrays (as the loaders would build it)."""
    names = tuple(f"f{i}" for i in range(features.shape[1]))
    return Dataset(
        name=name,
        features=np.asarray(features, dtype=np.float64),
        labels=np.asarray(labels),
        feature_names=names,
        target="label",
        fingerprint=fingerprint(np.asarray(features, dtype=np.float64), np.asarray(labels), names),
        source="test",
    )
