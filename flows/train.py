"""The ``train`` flow: data → preprocessing → quantum + classical training → evaluation → MLflow.

Preprocessing and training (quantum and baselines) are cached on their inputs with persisted
results (:mod:`tasks.caching`); loading the data (which yields the fingerprint the keys use)
and everything MLflow are not, so every flow run leaves a complete MLflow run of its own.
``force=True`` recomputes the cached steps and discards the training's checkpoints.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from prefect import flow
from prefect.runtime import flow_run

from qmlops.config import (
    CircuitConfig,
    DatasetConfig,
    DeviceConfig,
    PromotionConfig,
    TrackingConfig,
    TrainingConfig,
    resolve_circuit,
    resolve_encoding,
    resolve_model_name,
)
from qmlops.promotion import PromotionDecision
from tasks.caching import cached
from tasks.data import load_dataset, preprocess_features
from tasks.devices import check_device_run, training_device
from tasks.evaluation import evaluate_models
from tasks.reporting import publish_summary
from tasks.tracking import flow_run_tags, prepare_tracking, promote_model, tracked_run
from tasks.train_and_record import train_and_record, train_run_configs
from tasks.training import (
    check_training_size,
    discard_checkpoints,
    train_baselines,
    training_task,
)


@flow(name="train", log_prints=True)
def train(
    dataset: DatasetConfig = DatasetConfig(),  # noqa: B008 - frozen pydantic defaults
    circuit: CircuitConfig = CircuitConfig(),  # noqa: B008
    training: TrainingConfig = TrainingConfig(),  # noqa: B008
    tracking: TrackingConfig = TrackingConfig(),  # noqa: B008
    promotion: PromotionConfig = PromotionConfig(),  # noqa: B008
    force: bool = False,
    device: DeviceConfig = DeviceConfig(),  # noqa: B008
) -> dict[str, Any]:
    """Train a variational quantum classifier and classical baselines, track everything.

    Args:
        dataset: Which data and how to split and encode it.
        circuit: Feature map and ansatz (empty qubits and depth: from the data).
        training: Optimizer and simulator settings.
        tracking: MLflow experiment, registered model name (empty: qmlops-{dataset}) and
            tracking URI.
        promotion: When the registered version takes the `champion` alias.
        force: Recompute cached steps and train from scratch (ignore checkpoints).
        device: Where the model is also evaluated (test_*_device metrics), optionally trained,
            and the shot / QPU-time budget that run may use.

    Returns:
        The MLflow run id, model URI, registered version, test metrics per model, and
        whether the training came from the cache or resumed from a checkpoint.
    """
    prepare_tracking(tracking.tracking_uri, tracking.experiment)
    data = load_dataset(dataset)
    circuit = resolve_circuit(circuit, data.features.shape[1], data.n_classes)
    dataset = resolve_encoding(dataset, circuit.qubits)
    model_name = resolve_model_name(tracking.model_name, dataset)
    prepared = cached(preprocess_features, force)(
        data, dataset, circuit.qubits, training.random_state
    )
    check_training_size(prepared, circuit, training, data.n_classes)
    device_plan = check_device_run(prepared, circuit, training, device, data.n_classes)
    if force:
        discard_checkpoints(prepared, circuit, training, training_device(device))

    with tracked_run(
        tracking.tracking_uri,
        tracking.experiment,
        run_name=str(flow_run.name or "train"),
        tags=flow_run_tags("train"),
    ) as run:
        baselines = cached(train_baselines, force)(prepared, training.random_state)
        recorded = train_and_record(
            run,
            data,
            prepared,
            circuit,
            training,
            configs=train_run_configs(dataset, circuit, training, tracking, promotion, device),
            baseline_evaluations=evaluate_models(baselines, prepared),
            model_name=model_name,
            register=tracking.register_model,
            trainer=training_task(training, force),
            device=device,
            device_plan=device_plan,
        )
        classifier, evaluations, model = (
            recorded.classifier,
            recorded.evaluations,
            recorded.model,
        )
        decision: PromotionDecision | None = None
        if model.registered_version:
            decision = promote_model(run, model, evaluations, data.fingerprint, promotion)
        publish_summary(
            evaluations,
            {
                "dataset": f"{data.name} (fingerprint {data.fingerprint[:12]})",
                "MLflow run": f"{run.run_id} in {run.tracking_uri}",
                "model": model.model_uri
                + (
                    f" registered as {model.registered_name} v{model.registered_version}"
                    if model.registered_version
                    else ""
                ),
                "training": f"{classifier.n_iter_} iterations on {classifier.backend_} in "
                f"{classifier.fit_time_:.2f} s",
                "champion gate": "not registered" if decision is None else decision.summary(),
            },
        )
    return {
        "run_id": run.run_id,
        "tracking_uri": run.tracking_uri,
        "experiment_id": run.experiment_id,
        "model_uri": model.model_uri,
        "registered_model": model.registered_name,
        "registered_version": model.registered_version,
        "metrics": {name: evaluation["metrics"] for name, evaluation in evaluations.items()},
        "fit_time_s": classifier.fit_time_,
        "backend": classifier.backend_,
        "promotion": None if decision is None else decision.tags(),
        "training_cached": recorded.training_cached,
        "resumed_from_iteration": recorded.resumed_from_iteration,
        "device": (
            None
            if recorded.device_evaluation is None
            else dataclasses.asdict(recorded.device_evaluation)
        ),
    }


if __name__ == "__main__":
    train()
