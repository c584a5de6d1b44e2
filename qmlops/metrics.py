"""Held-out evaluation metrics shared by the quantum model and the classical baselines."""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    roc_auc_score,
)

METRIC_NAMES = ("accuracy", "balanced_accuracy", "f1_macro", "roc_auc")


def classification_metrics(
    y_true: np.ndarray, y_pred: np.ndarray, probabilities: np.ndarray, classes: np.ndarray
) -> dict[str, float]:
    """Accuracy, balanced accuracy, macro F1 and ROC-AUC (one-vs-rest macro for >2 classes).

    Args:
        y_true: True labels.
        y_pred: Predicted labels.
        probabilities: Class scores ``(n_samples, n_classes)`` ordered as ``classes``.
        classes: Class labels of the score columns.

    Returns:
        Metric name to value; ROC-AUC is NaN when the test set lacks a class.
    """
    metrics = {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "balanced_accuracy": float(balanced_accuracy_score(y_true, y_pred)),
        "f1_macro": float(f1_score(y_true, y_pred, average="macro", zero_division=0)),
    }
    try:
        if len(classes) == 2:
            auc = roc_auc_score(y_true == classes[1], probabilities[:, 1])
        else:
            scores = probabilities / probabilities.sum(axis=1, keepdims=True)
            auc = roc_auc_score(y_true, scores, multi_class="ovr", labels=classes)
        metrics["roc_auc"] = float(auc)
    except ValueError:
        metrics["roc_auc"] = float("nan")
    return metrics


def evaluate_classifier(model: Any, X: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """Evaluate a fitted scikit-learn classifier with ``predict_proba``.

    Returns:
        ``metrics`` (see :func:`classification_metrics`), ``confusion_matrix`` (rows: true,
        columns: predicted, ordered as ``labels``), ``labels`` and ``predictions``.
    """
    probabilities = model.predict_proba(X)
    predictions = model.classes_[probabilities.argmax(axis=1)]
    return {
        "metrics": classification_metrics(y, predictions, probabilities, model.classes_),
        "confusion_matrix": confusion_matrix(y, predictions, labels=model.classes_).tolist(),
        "labels": [str(label) for label in model.classes_],
        "predictions": predictions,
    }
