"""Logging a training run: its inputs, training curves and circuit, and its evaluation."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import qiskit.qpy
from mlflow.entities import Metric, RunTag

from qmlops import plots
from qmlops.circuits import circuit_summary
from qmlops.classifier import QuantumClassifier
from qmlops.data import Dataset
from tasks.retry import retrying_task
from tasks.tracking.records import config_params, log_metrics, log_png, run_timestamp
from tasks.tracking.store import TrackedRun


@retrying_task
def log_run_inputs(run: TrackedRun, configs: dict[str, dict[str, Any]], dataset: Dataset) -> None:
    """Log the whole configuration, the dataset identity, seeds and package versions."""
    params = config_params(
        configs,
        {
            "dataset.fingerprint": dataset.fingerprint,
            "dataset.source": dataset.source,
            "dataset.n_samples": str(dataset.features.shape[0]),
            "dataset.n_features": str(dataset.features.shape[1]),
            "dataset.n_classes": str(dataset.n_classes),
        },
    )
    run.client().log_batch(
        run.run_id,
        params=params,
        tags=[
            RunTag("dataset.fingerprint", dataset.fingerprint),
            RunTag("dataset.name", dataset.name),
        ],
    )


@retrying_task
def log_training(run: TrackedRun, classifier: QuantumClassifier) -> None:
    """Log per-iteration curves (with ``step``), training cost, circuit size and the circuit."""
    now = run_timestamp(run)
    curves = {
        "train_loss": classifier.loss_curve_,
        "train_accuracy": classifier.train_accuracy_curve_,
        "validation_accuracy": classifier.validation_accuracy_curve_,
        "validation_loss": getattr(classifier, "validation_loss_curve_", []),
    }
    metrics = [
        Metric(key, float(value), now, step)
        for key, values in curves.items()
        for step, value in enumerate(values)
    ]
    summary: dict[str, float | None] = {
        "training_time_s": classifier.fit_time_,
        "circuit_evaluations": classifier.circuit_evaluations_,
        "primitive_calls": classifier.primitive_calls_,
        "iterations": classifier.n_iter_,
        **circuit_summary(classifier.spec_),
    }
    # Early stopping: where it stopped (``iterations``) and which weights it kept.
    if getattr(classifier, "best_iteration_", None) is not None:
        summary["best_iteration"] = classifier.best_iteration_
        summary["best_validation_loss"] = classifier.best_validation_loss_
        summary["stopped_early"] = int(classifier.stopped_early_)
    metrics += [
        Metric(key, float(value), now, 0) for key, value in summary.items() if value is not None
    ]
    log_metrics(run, metrics)
    client = run.client()
    client.set_tag(run.run_id, "simulation_backend", classifier.backend_)
    curves_figure = plots.training_curves_figure(
        classifier.loss_curve_,
        classifier.train_accuracy_curve_,
        classifier.validation_accuracy_curve_,
    )
    log_png(client, run.run_id, plots.png(curves_figure), "training_curves.png")
    log_png(client, run.run_id, plots.circuit_png(classifier.spec_), "circuit.png")
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "circuit.qpy"
        with path.open("wb") as handle:
            qiskit.qpy.dump(classifier.circuit_, handle)
        client.log_artifact(run.run_id, str(path), artifact_path="circuit")
        spec_path = Path(folder) / "circuit_spec.json"
        spec_path.write_text(json.dumps(classifier.spec_.to_dict(), indent=2))
        client.log_artifact(run.run_id, str(spec_path), artifact_path="circuit")


@retrying_task
def log_evaluation(run: TrackedRun, evaluations: dict[str, dict[str, Any]]) -> None:
    """Log every model's test metrics, the quantum confusion matrix and an evaluation JSON.

    Metric names: ``test_*`` for the quantum model, ``<baseline>_test_*`` for the baselines.
    """
    now = run_timestamp(run)
    metrics = []
    for model_name, evaluation in evaluations.items():
        prefix = "" if model_name == "quantum" else f"{model_name}_"
        for key, value in evaluation["metrics"].items():
            if np.isfinite(value):
                metrics.append(Metric(f"{prefix}test_{key}", float(value), now, 0))
    log_metrics(run, metrics)
    client = run.client()
    quantum = evaluations["quantum"]
    matrix_figure = plots.confusion_matrix_figure(quantum["confusion_matrix"], quantum["labels"])
    log_png(client, run.run_id, plots.png(matrix_figure), "confusion_matrix.png")
    report = {
        name: {key: value for key, value in evaluation.items() if key != "predictions"}
        for name, evaluation in evaluations.items()
    }
    client.log_text(run.run_id, json.dumps(report, indent=2, default=float), "evaluation.json")
