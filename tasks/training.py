"""Training tasks: the quantum classifier and the classical baselines."""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger

from qmlops.baselines import train_baselines as fit_baselines
from qmlops.classifier import QuantumClassifier
from qmlops.config import ORCHESTRATION_FIELDS, CircuitConfig, TrainingConfig
from qmlops.training import IterationRecord
from tasks.data import PreparedData
from tasks.policy import RETRIES, RETRY_DELAY_SECONDS, retry_if_transient

PROGRESS_EVERY = 10


def build_classifier(
    circuit: CircuitConfig, training: TrainingConfig, **extra: Any
) -> QuantumClassifier:
    """Build the estimator from the flow parameters (field names equal estimator params)."""
    params = {
        **circuit.model_dump(exclude={"n_qubits"}),
        **training.model_dump(exclude=ORCHESTRATION_FIELDS),
    }
    return QuantumClassifier(**params, **extra)


@task(
    name="train-classifier",
    retries=RETRIES,
    retry_delay_seconds=RETRY_DELAY_SECONDS,
    retry_condition_fn=retry_if_transient,
    cache_policy=NO_CACHE,
)
def train_classifier(
    prepared: PreparedData, circuit: CircuitConfig, training: TrainingConfig
) -> QuantumClassifier:
    """Train the variational quantum classifier, logging progress as it goes."""
    logger = get_run_logger()

    def report(record: IterationRecord) -> None:
        if record.iteration % PROGRESS_EVERY == 0 or record.iteration == training.maxiter:
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

    validation = None
    if prepared.X_val is not None:
        validation = (prepared.X_val, prepared.raw.y_val)
    classifier = build_classifier(circuit, training, callback=report)
    classifier.fit(prepared.X_train, prepared.raw.y_train, validation_data=validation)
    classifier.callback = None  # the closure holds a logger; keep the fitted model plain
    logger.info(
        "trained on %s in %.2f s: %d circuit evaluations in %d batched calls",
        classifier.backend_,
        classifier.fit_time_,
        classifier.circuit_evaluations_,
        classifier.primitive_calls_,
    )
    return classifier


@task(name="train-baselines", retries=0, cache_policy=NO_CACHE)
def train_baselines(prepared: PreparedData, random_state: int) -> dict[str, Any]:
    """Fit the classical baselines on the same encoded features."""
    return fit_baselines(prepared.X_train, prepared.raw.y_train, random_state)
