"""Evaluation task: every model on the held-out test split."""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from qmlops.metrics import evaluate_classifier
from tasks.data import PreparedData


@task(name="evaluate-models", retries=0, cache_policy=NO_CACHE)
def evaluate_models(models: dict[str, Any], prepared: PreparedData) -> dict[str, dict[str, Any]]:
    """Evaluate each named model on the test split.

    Returns:
        Model name to :func:`qmlops.metrics.evaluate_classifier` output.
    """
    return {
        name: evaluate_classifier(model, prepared.X_test, prepared.raw.y_test)
        for name, model in models.items()
    }
