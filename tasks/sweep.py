"""Sweep tasks: train one configuration as a nested MLflow run (task runners: tasks/runners.py).

``train_configuration`` is what the sweep fans out. It trains and records through
:func:`tasks.train_and_record.train_and_record`, the ``train`` flow's own path (its tasks run
as nested task runs), so every child run is as complete as a single training run. It runs in
a worker thread (thread runner), in a worker process of Prefect's ``ProcessPoolTaskRunner`` or
in a Ray worker process (``RayTaskRunner``), so everything it needs comes in as arguments
(pickled for the processes) and all it returns is a JSON-safe outcome
(:func:`qmlops.sweep_report.outcome`).
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from qmlops.concurrency import training_threads
from qmlops.config import DatasetConfig
from qmlops.data import Dataset
from qmlops.errors import InputError
from qmlops.scheduling import training_cost
from qmlops.search_space import SweepConfiguration, SweepExecution
from qmlops.sweep_report import outcome
from tasks.data import PreparedData
from tasks.devices import check_device_run
from tasks.tracking import TrackedRun, tracked_child_run
from tasks.train_and_record import train_and_record
from tasks.training import plan_training


def estimated_cost(
    configuration: SweepConfiguration, prepared: PreparedData, n_classes: int
) -> float:
    """Relative cost of training a configuration (:func:`qmlops.scheduling.training_cost`).

    A configuration its size guard or checks refuse costs infinity: started first, it fails at
    once and is reported, holding up nothing.
    """
    try:
        return training_cost(
            *plan_training(prepared, configuration.circuit, configuration.training, n_classes)
        )
    except InputError:
        return math.inf


@task(
    name="train-configuration",
    task_run_name="train-{configuration.name}",
    retries=0,  # its inner tasks retry transient failures; a failure here is reported
    cache_policy=NO_CACHE,
    persist_result=True,
)
def train_configuration(
    configuration: SweepConfiguration,
    dataset: Dataset,
    prepared: PreparedData,
    baseline_evaluations: dict[str, dict[str, Any]],
    parent: TrackedRun,
    threads: int,
    own_process: bool,
    model_name: str = "qmlops-classifier",
) -> dict[str, Any]:
    """Train and evaluate one configuration and record it as a child of the sweep's run.

    The size guard and the device check (device, shots, budget) run before the child run
    opens; a refused configuration fails this task (the sweep reports it) without leaving a
    run behind.

    Args:
        configuration: The configuration.
        dataset: Its dataset (identity and fingerprint are logged).
        prepared: The shared split and encoder of its dataset.
        baseline_evaluations: Test evaluations of the classical baselines on the same split.
        parent: The sweep's MLflow run (the child opens in its experiment).
        threads: OpenMP/BLAS threads this training may use.
        own_process: Whether this task has its process to itself (processes, Ray): then the
            process-wide BLAS limit is set here; in threads, the flow sets it once for all.
        model_name: Name the model is registered under if it wins (recorded only).

    Returns:
        The outcome record (metrics, time, circuit size, loss curve, child run id).
    """
    with training_threads(threads, whole_process=own_process):
        # The size guard and the device check, before any run opens.
        plan_training(prepared, configuration.circuit, configuration.training, dataset.n_classes)
        device_plan = check_device_run(
            prepared,
            configuration.circuit,
            configuration.training,
            configuration.device,
            dataset.n_classes,
        )
        with tracked_child_run(
            parent,
            run_name=configuration.name,
            tags={
                "sweep.configuration": configuration.name,
                "sweep.parent_run_id": parent.run_id,
            },
        ) as child:
            recorded = train_and_record(
                child,
                dataset,
                prepared,
                configuration.circuit,
                configuration.training,
                configs={
                    "dataset": configuration.dataset.model_dump(),
                    "circuit": configuration.circuit.model_dump(),
                    "training": configuration.training.model_dump(),
                    "device": configuration.device.model_dump(),
                    "sweep": {
                        "configuration": configuration.name,
                        **{f"varied.{k}": v for k, v in configuration.varied.items()},
                        "threads": threads,
                    },
                },
                baseline_evaluations=baseline_evaluations,
                model_name=model_name,
                register=False,
                device=configuration.device,
                device_plan=device_plan,
            )
    from qmlops.circuits import circuit_summary

    classifier = recorded.classifier
    validation = classifier.validation_accuracy_curve_
    return outcome(
        configuration.name,
        configuration.varied,
        run_id=child.run_id,
        metrics=recorded.quantum_metrics,
        validation_accuracy=validation[-1] if validation else None,
        training_time_s=classifier.fit_time_,
        size={
            **circuit_summary(classifier.spec_),
            "circuit_evaluations": classifier.circuit_evaluations_,
        },
        loss_curve=classifier.loss_curve_,
    )


def configuration_task(execution: SweepExecution) -> Any:
    """``train_configuration`` persisting its results where ``execution.result_storage`` says.

    A folder (a path or ``file://`` URL) becomes a saved ``LocalFileSystem`` block; anything else
    is a Prefect storage block slug (``s3-bucket/qmlops-results``) that every worker can read.
    Without it, Prefect's default local storage (``$PREFECT_HOME/storage``) is used, which worker
    processes and Ray workers on this machine share.
    """
    storage = execution.result_storage
    if storage is None:
        return train_configuration
    if storage.startswith(("/", "file://", ".")):
        from prefect.filesystems import LocalFileSystem

        folder = Path(storage.removeprefix("file://")).resolve()
        # Prefect wants storage saved server-side (workers load it by slug): one block per folder.
        name = "qmlops-sweep-" + hashlib.sha256(str(folder).encode()).hexdigest()[:16]
        LocalFileSystem(basepath=str(folder)).save(name, overwrite=True)
        storage = f"local-file-system/{name}"
    return train_configuration.with_options(result_storage=storage)


def data_key_label(dataset: DatasetConfig, n_qubits: int) -> str:
    """Readable name of a prepared data set: ``<dataset>-<n>q``."""
    name = Path(dataset.path).stem if dataset.path else dataset.name
    return f"{name}-{n_qubits}q"
