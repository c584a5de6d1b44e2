"""Training tasks: the quantum classifier and the classical baselines.

The quantum training checkpoints its state (see :mod:`qmlops.checkpoint`) under
``$QMLOPS_CHECKPOINT_DIR`` (default ``./.qmlops/checkpoints``), keyed by the prepared data's
fingerprint, the circuit and training settings and the code version: a retry or a re-run with
the same inputs resumes from the newest good checkpoint.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from prefect import Task, task
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger

from qmlops.baselines import train_baselines as fit_baselines
from qmlops.checkpoint import CheckpointStore, training_key
from qmlops.circuits import CircuitSpec, ResourceEstimate
from qmlops.classifier import QuantumClassifier
from qmlops.config import ORCHESTRATION_FIELDS, CircuitConfig, DeviceConfig, TrainingConfig
from qmlops.training import IterationRecord
from tasks import faults
from tasks.caching import cached
from tasks.data import PreparedData
from tasks.retry import retrying_task

PROGRESS_EVERY = 10
PROGRESS_LINES = 20


def progress_interval(maxiter: int) -> int:
    """Iterations between progress log lines: every 10, but at most about 20 lines a training.

    Every line goes to the Prefect API; a 2000-step training logged every 10 iterations wrote
    200 lines that said less than its loss curve in MLflow.
    """
    return max(PROGRESS_EVERY, -(-maxiter // PROGRESS_LINES))


CHECKPOINT_DIR_ENV = "QMLOPS_CHECKPOINT_DIR"


def build_classifier(
    circuit: CircuitConfig,
    training: TrainingConfig,
    device: DeviceConfig | None = None,
    **extra: Any,
) -> QuantumClassifier:
    """Build the estimator from the flow parameters (field names equal estimator params).

    With ``device`` (training under a device's noise) it is a
    :class:`~qmlops.noisy.DeviceClassifier`.
    """
    params = {
        **circuit.model_dump(exclude={"n_qubits"}),
        **training.model_dump(exclude=ORCHESTRATION_FIELDS),
    }
    if device is not None:
        from qmlops.budget import device_classifier_params
        from qmlops.noisy import DeviceClassifier

        return DeviceClassifier(**params, **device_classifier_params(device), **extra)
    return QuantumClassifier(**params, **extra)


def plan_training(
    prepared: PreparedData, circuit: CircuitConfig, training: TrainingConfig, n_classes: int
) -> tuple[CircuitSpec, ResourceEstimate]:
    """The size guard: check a training against its data's shape, simulating nothing.

    Returns:
        The circuit description and the resource estimate (see ``QuantumClassifier.plan``).

    Raises:
        ConfigurationError: For invalid hyper-parameters.
        SizeLimitError: If the job exceeds the size guard.
    """
    n_validation = 0 if prepared.X_val is None else prepared.X_val.shape[0]
    return build_classifier(circuit, training).plan(
        prepared.X_train.shape[0], n_validation, prepared.X_train.shape[1], n_classes
    )


@task(name="check-training-size", retries=0, cache_policy=NO_CACHE)
def check_training_size(
    prepared: PreparedData, circuit: CircuitConfig, training: TrainingConfig, n_classes: int
) -> None:
    """Refuse oversized jobs before a tracking run is opened or a circuit is simulated."""
    plan_training(prepared, circuit, training, n_classes)


def checkpoint_dir() -> Path:
    """Root of all training checkpoints: ``$QMLOPS_CHECKPOINT_DIR`` or ``./.qmlops/checkpoints``."""
    return Path(os.environ.get(CHECKPOINT_DIR_ENV) or Path.cwd() / ".qmlops" / "checkpoints")


def checkpoint_store(
    prepared: PreparedData,
    circuit: CircuitConfig,
    training: TrainingConfig,
    device: DeviceConfig | None = None,
) -> CheckpointStore:
    """The checkpoints of training these data with these settings (on ``device``, if given)."""
    on_device = {} if device is None else {"device": device.model_dump(mode="json")}
    key = training_key(
        data=prepared.fingerprint,
        circuit=circuit.model_dump(mode="json"),
        training=training.model_dump(mode="json", exclude=ORCHESTRATION_FIELDS),
        **on_device,
    )
    return CheckpointStore(checkpoint_dir(), key, every=training.checkpoint_every)


@retrying_task
def train_classifier(
    prepared: PreparedData,
    circuit: CircuitConfig,
    training: TrainingConfig,
    device: DeviceConfig | None = None,
) -> QuantumClassifier:
    """Train the variational quantum classifier, checkpointing and logging progress.

    With ``device``, every training evaluation is sampled under that device's noise.
    """
    logger = get_run_logger()
    every = progress_interval(training.maxiter)

    def report(record: IterationRecord) -> None:
        if record.iteration % every == 0 or record.iteration == training.maxiter:
            validation = (
                ""
                if record.validation_accuracy is None
                else f" validation accuracy {record.validation_accuracy:.3f}"
            )
            logger.info(
                "iteration %d/%d loss %.4f train accuracy %.3f%s",
                record.iteration,
                training.maxiter,
                record.loss,
                record.train_accuracy,
                validation,
            )
        faults.inject("train", record.iteration)

    validation = None
    if prepared.X_val is not None:
        validation = (prepared.X_val, prepared.raw.y_val)
    store = checkpoint_store(prepared, circuit, training, device)
    classifier = build_classifier(circuit, training, device, callback=report)
    classifier.fit(
        prepared.X_train, prepared.raw.y_train, validation_data=validation, checkpoint=store
    )
    classifier.callback = None  # the closure holds a logger; keep the fitted model plain
    for path in store.rejected:
        logger.warning("skipped a corrupt or truncated checkpoint: %s", path)
    if classifier.resumed_from_:
        logger.info("resumed from the checkpoint at iteration %d", classifier.resumed_from_)
    if classifier.best_iteration_ is not None:
        logger.info(
            "early stopping: %s after %d iterations; kept the weights of iteration %d "
            "(validation loss %.4f)",
            "stopped" if classifier.stopped_early_ else "ran all",
            classifier.n_iter_,
            classifier.best_iteration_,
            classifier.best_validation_loss_,
        )
    logger.info(
        "trained on %s in %.2f s: %d circuit evaluations in %d batched calls",
        classifier.backend_,
        classifier.fit_time_,
        classifier.circuit_evaluations_,
        classifier.primitive_calls_,
    )
    return classifier


@task(name="discard-checkpoints", retries=0, cache_policy=NO_CACHE)
def discard_checkpoints(
    prepared: PreparedData,
    circuit: CircuitConfig,
    training: TrainingConfig,
    device: DeviceConfig | None = None,
) -> None:
    """Remove the checkpoints of this training (a forced re-run starts from scratch)."""
    checkpoint_store(prepared, circuit, training, device).clear()


def training_task(training: TrainingConfig, force: bool = False) -> Task[Any, Any]:
    """:func:`train_classifier`, cached on its inputs, with the configured time limit."""
    return cached(train_classifier, force).with_options(timeout_seconds=training.timeout_s)


@task(name="train-baselines", retries=0, cache_policy=NO_CACHE)
def train_baselines(prepared: PreparedData, random_state: int) -> dict[str, Any]:
    """Fit the classical baselines on the same encoded features."""
    return fit_baselines(prepared.X_train, prepared.raw.y_train, random_state)
