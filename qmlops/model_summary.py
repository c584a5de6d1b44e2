"""Tabular summaries of evaluation results (shared by the CLI and the Prefect artifact)."""

from __future__ import annotations

from typing import Any

from qmlops.metrics import METRIC_NAMES


def summary_rows(evaluations: dict[str, dict[str, Any]]) -> list[list[str]]:
    """One row per model: its name, then each metric of :data:`METRIC_NAMES` to 3 decimals."""
    return [
        [name]
        + [f"{evaluation['metrics'].get(metric, float('nan')):.3f}" for metric in METRIC_NAMES]
        for name, evaluation in evaluations.items()
    ]
