"""Classical baselines trained on exactly the features the quantum model sees."""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.calibration import CalibratedClassifierCV
from sklearn.linear_model import LogisticRegression
from sklearn.svm import SVC

BASELINES = ("svc", "logistic_regression")


def train_baselines(X: np.ndarray, y: np.ndarray, random_state: int) -> dict[str, Any]:
    """Fit an RBF SVC and a logistic regression.

    Args:
        X: Training features (the encoding angles of the quantum model).
        y: Training labels.
        random_state: Seed of the SVC.

    Returns:
        Baseline name to fitted estimator.
    """
    return {
        "svc": CalibratedClassifierCV(SVC(random_state=random_state), ensemble=False).fit(X, y),
        "logistic_regression": LogisticRegression(max_iter=2000).fit(X, y),
    }
