"""Logging a sweep's parent run: its settings, search space and comparison."""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from mlflow.entities import Metric, RunTag

from qmlops import plots
from tasks.retry import retrying_task
from tasks.tracking.records import config_params, log_png
from tasks.tracking.store import TrackedRun


@retrying_task
def log_sweep_inputs(run: TrackedRun, configs: dict[str, dict[str, Any]], space: str) -> None:
    """Log a sweep's settings and package versions as params, its search space as JSON."""
    run.client().log_batch(run.run_id, params=config_params(configs, {}))
    run.client().log_text(run.run_id, space, "sweep/search_space.json")


@retrying_task
def log_sweep_comparison(
    run: TrackedRun,
    rows: list[dict[str, Any]],
    outcomes: list[dict[str, Any]],
    best: dict[str, Any] | None,
    metric: str,
    rule: str,
    baseline_metrics: dict[str, dict[str, float]],
) -> None:
    """Log the comparison table (CSV and JSON), the figures, the best configuration, baselines.

    Baseline metrics are logged as ``<baseline>_test_<metric>`` (prefixed with the data key
    when the sweep covers several datasets or qubit counts).
    """
    from qmlops import sweep_report

    client = run.client()
    with tempfile.TemporaryDirectory() as folder:
        table = Path(folder) / "comparison.csv"
        pd.DataFrame(rows).to_csv(table, index=False)
        client.log_artifact(run.run_id, str(table), artifact_path="sweep")
    client.log_text(
        run.run_id,
        json.dumps({"metric": metric, "rule": rule, "best": best, "rows": rows}, indent=2),
        "sweep/comparison.json",
    )
    figures = {
        "accuracy_vs_parameters.png": sweep_report.accuracy_vs_parameters_figure(rows, metric),
        "accuracy_vs_time.png": sweep_report.accuracy_vs_time_figure(rows, metric),
        "loss_curves.png": sweep_report.loss_curves_figure(outcomes),
    }
    for name, figure in figures.items():
        # Point labels may reach past the axes: crop to everything drawn.
        log_png(client, run.run_id, plots.png(figure, tight=True), name)
    now = int(time.time() * 1000)
    metrics = [
        Metric("configurations_completed", float(sum(r["status"] == "completed" for r in rows)),
               now, 0),
        Metric("configurations_failed", float(sum(r["status"] == "failed" for r in rows)), now, 0),
    ]  # fmt: skip
    several = len(baseline_metrics) > 1
    for data_key, by_baseline in baseline_metrics.items():
        prefix = f"{data_key}." if several else ""
        metrics += [
            Metric(f"{prefix}{name}", float(value), now, 0)
            for name, value in by_baseline.items()
            if np.isfinite(value)
        ]
    tags = [RunTag("sweep.selection_metric", metric), RunTag("sweep.selection_rule", rule)]
    if best is not None:
        metrics.append(Metric(f"best_{metric}", float(best[metric]), now, 0))
        tags += [
            RunTag("sweep.best_configuration", str(best["configuration"])),
            RunTag("sweep.best_run_id", str(best["mlflow_run_id"])),
        ]
    client.log_batch(run.run_id, metrics=metrics, tags=tags)
