"""The ``train`` flow: data → preprocessing → quantum + classical training → evaluation → MLflow.

Preprocessing and training (quantum and baselines) are cached on their inputs with persisted
results (:mod:`tasks.caching`); loading the data (which yields the fingerprint the keys use)
and everything MLflow are not, so every flow run leaves a complete MLflow run of its own.
``force=True`` recomputes the cached steps and discards the training's checkpoints.
"""

from __future__ import annotations

from typing import Any, cast

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run
from prefect.states import State

from qmlops.classifier import QuantumClassifier
from qmlops.config import (
    CircuitConfig,
    DatasetConfig,
    PromotionConfig,
    TrackingConfig,
    TrainingConfig,
    resolve_circuit,
    resolve_model_name,
)
from qmlops.promotion import PromotionDecision
from tasks.caching import cached
from tasks.data import load_dataset, preprocess_features
from tasks.evaluation import evaluate_models
from tasks.hygiene import close_or_remember, prepare_tracking
from tasks.reporting import publish_summary
from tasks.tracking import (
    end_tracking_run,
    flow_run_tags,
    log_evaluation,
    log_model,
    log_run_inputs,
    log_training,
    promote_model,
    set_run_tags,
    start_tracking_run,
)
from tasks.training import (
    build_classifier,
    discard_checkpoints,
    train_baselines,
    training_task,
)


@task(name="check-training-size", retries=0, cache_policy=NO_CACHE)
def check_training_size(
    prepared: Any, circuit: CircuitConfig, training: TrainingConfig, n_classes: int
) -> None:
    """Refuse oversized jobs before a tracking run is opened or a circuit is simulated."""
    n_validation = 0 if prepared.X_val is None else prepared.X_val.shape[0]
    build_classifier(circuit, training).plan(
        prepared.X_train.shape[0], n_validation, prepared.X_train.shape[1], n_classes
    )


@flow(name="train", log_prints=True)
def train(
    dataset: DatasetConfig = DatasetConfig(),  # noqa: B008 - frozen pydantic defaults
    circuit: CircuitConfig = CircuitConfig(),  # noqa: B008
    training: TrainingConfig = TrainingConfig(),  # noqa: B008
    tracking: TrackingConfig = TrackingConfig(),  # noqa: B008
    promotion: PromotionConfig = PromotionConfig(),  # noqa: B008
    force: bool = False,
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

    Returns:
        The MLflow run id, model URI, registered version, test metrics per model, and
        whether the training came from the cache or resumed from a checkpoint.
    """
    prepare_tracking(tracking.tracking_uri, tracking.experiment)
    data = load_dataset(dataset)
    circuit = resolve_circuit(circuit, data.features.shape[1], data.n_classes)
    model_name = resolve_model_name(tracking.model_name, dataset)
    prepared = cached(preprocess_features, force)(
        data, dataset, circuit.qubits, training.random_state
    )
    check_training_size(prepared, circuit, training, data.n_classes)
    if force:
        discard_checkpoints(prepared, circuit, training)

    run = start_tracking_run(
        tracking.tracking_uri,
        tracking.experiment,
        run_name=str(flow_run.name or "train"),
        tags=flow_run_tags("train"),
    )
    try:
        log_run_inputs(
            run,
            {
                "dataset": dataset.model_dump(),
                "circuit": circuit.model_dump(),
                "training": training.model_dump(),
                "tracking": {
                    **tracking.model_dump(exclude={"tracking_uri"}),
                    "model_name": model_name,
                },
                "promotion": promotion.model_dump(),
            },
            data,
        )
        trained = cast(
            State, training_task(training, force)(prepared, circuit, training, return_state=True)
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
        baselines = cached(train_baselines, force)(prepared, training.random_state)
        evaluations = evaluate_models({"quantum": classifier, **baselines}, prepared)
        log_training(run, classifier)
        log_evaluation(run, evaluations)
        model = log_model(
            run,
            classifier,
            prepared,
            list(data.feature_names),
            model_name,
            tracking.register_model,
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
        end_tracking_run(run, "FINISHED")
    except BaseException as error:
        # Also on SIGTERM (Prefect raises TerminationSignal here): the run ends KILLED.
        close_or_remember(run, error)
        raise
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
        "training_cached": training_cached,
        "resumed_from_iteration": int(getattr(classifier, "resumed_from_", 0)),
    }


if __name__ == "__main__":
    train()
