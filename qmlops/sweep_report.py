"""Comparing the configurations of a sweep: one table, the best configuration, the figures.

Each configuration's outcome is a plain dict (JSON-safe, so it crosses process and machine
boundaries and can be persisted as JSON) built by :func:`outcome`; failed configurations keep
their error and appear in the table with ``status = failed``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

from matplotlib.figure import Figure

from qmlops.metrics import METRIC_NAMES
from qmlops.plots import agg_figure

SelectionMetric = Literal[
    "test_accuracy",
    "test_balanced_accuracy",
    "test_f1_macro",
    "test_roc_auc",
    "validation_accuracy",
]
SIZE_COLUMNS = ("circuit_width", "circuit_depth", "circuit_parameters", "circuit_evaluations")
TIE_BREAK = "fewer circuit parameters, then shorter training time, then configuration name"


def outcome(
    name: str,
    varied: dict[str, Any],
    *,
    run_id: str | None = None,
    metrics: dict[str, float] | None = None,
    validation_accuracy: float | None = None,
    training_time_s: float | None = None,
    size: dict[str, int] | None = None,
    loss_curve: Sequence[float] = (),
    error: str | None = None,
) -> dict[str, Any]:
    """Record one configuration's result (or its failure) as plain data.

    Args:
        name: Configuration name.
        varied: Values of the varied axes.
        run_id: Its MLflow child run.
        metrics: Test metrics of the quantum model (``accuracy``, ...).
        validation_accuracy: Final validation accuracy, if monitored.
        training_time_s: Wall time of ``fit``.
        size: Circuit width, depth, parameters and evaluations.
        loss_curve: Training loss per iteration.
        error: ``"<ErrorType>: message"`` when the configuration failed.

    Returns:
        The outcome record.
    """
    return {
        "name": name,
        "status": "failed" if error else "completed",
        "varied": dict(varied),
        "run_id": run_id,
        "metrics": {key: float(value) for key, value in (metrics or {}).items()},
        "validation_accuracy": validation_accuracy,
        "training_time_s": training_time_s,
        "size": dict(size or {}),
        "loss_curve": [float(value) for value in loss_curve],
        "error": error,
    }


def comparison_rows(outcomes: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One flat row per configuration: varied values, metrics, time, circuit size, status.

    Every row has the same columns (missing values are ``None``), in a stable order.
    """
    axes: list[str] = []
    for result in outcomes:
        axes += [key for key in result["varied"] if key not in axes]
    # Device accuracies (evaluations on a device), only when some configuration has them.
    device_metrics = [
        key
        for key in ("accuracy_device", "accuracy_device_mitigated")
        if any(key in result["metrics"] for result in outcomes)
    ]
    rows = []
    for result in outcomes:
        row: dict[str, Any] = {"configuration": result["name"], "status": result["status"]}
        row.update({axis: result["varied"].get(axis) for axis in axes})
        row.update({f"test_{m}": result["metrics"].get(m) for m in METRIC_NAMES})
        row.update({f"test_{m}": result["metrics"].get(m) for m in device_metrics})
        row["validation_accuracy"] = result["validation_accuracy"]
        row["training_time_s"] = result["training_time_s"]
        row.update({column: result["size"].get(column) for column in SIZE_COLUMNS})
        row["mlflow_run_id"] = result["run_id"]
        row["error"] = result["error"]
        rows.append(row)
    return rows


def _usable(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def select_best(rows: Sequence[dict[str, Any]], metric: SelectionMetric) -> dict[str, Any] | None:
    """The completed configuration with the highest ``metric`` (ties: :data:`TIE_BREAK`).

    Returns:
        The winning row, or ``None`` if no completed configuration has the metric.
    """
    candidates = [r for r in rows if r["status"] == "completed" and _usable(r.get(metric))]
    if not candidates:
        return None
    return min(
        candidates,
        key=lambda r: (
            -r[metric],
            r.get("circuit_parameters") or 0,
            r.get("training_time_s") or 0.0,
            r["configuration"],
        ),
    )


def selection_rule(metric: SelectionMetric) -> str:
    """The rule :func:`select_best` applies, in words."""
    where = "on the validation split" if metric == "validation_accuracy" else "on the test split"
    return f"highest {metric} ({where}); ties: {TIE_BREAK}"


def _label(row: dict[str, Any]) -> str:
    return str(row["configuration"])


def _scatter(
    rows: Sequence[dict[str, Any]], x: str, xlabel: str, metric: str, title: str
) -> Figure:
    figure = agg_figure(figsize=(6, 4.5))
    axis = figure.subplots()
    done = [r for r in rows if _usable(r.get(x)) and _usable(r.get(metric))]
    axis.scatter([r[x] for r in done], [r[metric] for r in done], color="tab:blue")
    for row in done:
        axis.annotate(_label(row), (row[x], row[metric]), fontsize=8, xytext=(3, 3),
                      textcoords="offset points")  # fmt: skip
    axis.set(xlabel=xlabel, ylabel=metric, title=title, ylim=(-0.02, 1.02))
    figure.tight_layout()
    return figure


def accuracy_vs_parameters_figure(
    rows: Sequence[dict[str, Any]], metric: str = "test_accuracy"
) -> Figure:
    """Metric of each completed configuration against its trainable parameter count."""
    return _scatter(
        rows, "circuit_parameters", "trainable parameters", metric, f"{metric} vs circuit size"
    )


def accuracy_vs_time_figure(
    rows: Sequence[dict[str, Any]], metric: str = "test_accuracy"
) -> Figure:
    """Metric of each completed configuration against its training wall time."""
    return _scatter(rows, "training_time_s", "training time (s)", metric, f"{metric} vs time")


def loss_curves_figure(outcomes: Sequence[dict[str, Any]]) -> Figure:
    """Training loss per iteration of every completed configuration, overlaid."""
    figure = agg_figure(figsize=(7, 4.5))
    axis = figure.subplots()
    for result in outcomes:
        if result["loss_curve"]:
            curve = result["loss_curve"]
            axis.plot(range(len(curve)), curve, label=result["name"], linewidth=1.2)
    axis.set(xlabel="iteration", ylabel="cross-entropy loss", title="Training loss")
    if axis.get_legend_handles_labels()[0]:
        axis.legend(fontsize=7, ncol=2)
    figure.tight_layout()
    return figure
