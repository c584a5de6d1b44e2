"""Train the quantum classifier into an open MLflow run: the one path of ``train`` and sweeps.

The ``train`` flow and the sweep's per-configuration task both check the size first
(:func:`tasks.training.check_training_size` or :func:`tasks.training.plan_training`, before
the run opens) and the device (:func:`tasks.devices.check_device_run`), then call
:func:`train_and_record` inside the run: log the inputs, train (under the device's noise when
it trains there), evaluate beside the classical baselines and on the device, log curves,
evaluation, device results and the model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

from prefect import Task
from prefect.states import State

from qmlops.budget import DevicePlan
from qmlops.classifier import QuantumClassifier
from qmlops.config import (
    CircuitConfig,
    DatasetConfig,
    DeviceConfig,
    PromotionConfig,
    TrackingConfig,
    TrainingConfig,
    resolve_model_name,
)
from qmlops.data import Dataset
from qmlops.noisy import DeviceEvaluation
from tasks.data import PreparedData
from tasks.devices import (
    device_test_metrics,
    evaluate_on_device,
    log_device_results,
    training_device,
)
from tasks.evaluation import evaluate_models
from tasks.tracking import (
    LoggedModel,
    TrackedRun,
    log_evaluation,
    log_model,
    log_run_inputs,
    log_training,
    set_run_tags,
)
from tasks.training import train_classifier


@dataclass(frozen=True)
class RecordedTraining:
    """What :func:`train_and_record` trained and where it went.

    Attributes:
        classifier: The fitted quantum classifier.
        evaluations: Test evaluations, ``quantum`` first, then the baselines.
        model: The logged (and maybe registered) model.
        training_cached: Whether the training came from the result cache.
        device_evaluation: The test results on the device (``None``: no device run).
    """

    classifier: QuantumClassifier
    evaluations: dict[str, dict[str, Any]]
    model: LoggedModel
    training_cached: bool
    device_evaluation: DeviceEvaluation | None = None

    @property
    def quantum_metrics(self) -> dict[str, float]:
        """The quantum model's test metrics, with ``accuracy_device`` etc. after a device run."""
        metrics = dict(self.evaluations["quantum"]["metrics"])
        if self.device_evaluation is not None:
            metrics.update(device_test_metrics(self.device_evaluation))
        return metrics

    @property
    def resumed_from_iteration(self) -> int:
        """The checkpoint iteration the training resumed from (0: from scratch)."""
        return int(getattr(self.classifier, "resumed_from_", 0))


def train_run_configs(
    dataset: DatasetConfig,
    circuit: CircuitConfig,
    training: TrainingConfig,
    tracking: TrackingConfig,
    promotion: PromotionConfig,
    device: DeviceConfig = DeviceConfig(),  # noqa: B008 - frozen pydantic default
) -> dict[str, dict[str, Any]]:
    """The configuration sections a ``train`` run logs as params.

    Tracking without its URI and with the model name resolved from the dataset when empty;
    pass the circuit after :func:`qmlops.config.resolve_circuit` so the params hold the
    qubits and depth that ran.
    """
    return {
        "dataset": dataset.model_dump(),
        "circuit": circuit.model_dump(),
        "training": training.model_dump(),
        "tracking": {
            **tracking.model_dump(exclude={"tracking_uri"}),
            "model_name": resolve_model_name(tracking.model_name, dataset),
        },
        "promotion": promotion.model_dump(),
        "device": device.model_dump(),
    }


def train_and_record(
    run: TrackedRun,
    data: Dataset,
    prepared: PreparedData,
    circuit: CircuitConfig,
    training: TrainingConfig,
    *,
    configs: dict[str, dict[str, Any]],
    baseline_evaluations: dict[str, dict[str, Any]],
    model_name: str,
    register: bool,
    trainer: Task[Any, Any] = train_classifier,
    device: DeviceConfig = DeviceConfig(),  # noqa: B008 - frozen pydantic default
    device_plan: DevicePlan | None = None,
) -> RecordedTraining:
    """Train the quantum classifier and record everything about it in ``run``.

    Args:
        run: The open MLflow run (see :func:`tasks.tracking.tracked_run`).
        data: The dataset (its identity and fingerprint are logged).
        prepared: Its split and fitted encoder.
        circuit: Feature map and ansatz.
        training: Optimizer and simulator settings.
        configs: Configuration sections to log as params.
        baseline_evaluations: Test evaluations of the classical baselines on the same split.
        model_name: Name to register the model under.
        register: Whether to register the model.
        trainer: The training task (:func:`tasks.training.train_classifier`, or its cached,
            time-limited variant :func:`tasks.training.training_task`).
        device: The device settings: where it trains (``train_on``), shots, mitigation.
        device_plan: The checked device run from :func:`tasks.devices.check_device_run`
            (``None``: the ideal device, nothing runs on a device).

    Returns:
        The classifier, its evaluations, the logged model, whether it came from the cache and
        its results on the device.
    """
    log_run_inputs(run, configs, data)
    if device_plan is not None:
        log_device_results(run, device_plan)  # the estimate, before anything runs there
    trained = cast(
        State, trainer(prepared, circuit, training, training_device(device), return_state=True)
    )
    classifier = cast(QuantumClassifier, trained.result())
    training_cached = trained.name == "Cached"
    set_run_tags(
        run,
        {
            "qmlops.training_cached": str(training_cached).lower(),
            "qmlops.resumed_from_iteration": str(getattr(classifier, "resumed_from_", 0)),
        },
    )
    evaluations = {
        **evaluate_models({"quantum": classifier}, prepared),
        **baseline_evaluations,
    }
    log_training(run, classifier)
    log_evaluation(run, evaluations)
    device_evaluation = None
    if device_plan is not None:
        device_evaluation = evaluate_on_device(
            classifier, prepared, device, device_plan, training.random_state
        )
        log_device_results(run, device_plan, device_evaluation)
    model = log_model(run, classifier, prepared, list(data.feature_names), model_name, register)
    return RecordedTraining(classifier, evaluations, model, training_cached, device_evaluation)
