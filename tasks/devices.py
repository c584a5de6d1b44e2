"""Device tasks: check a device run and its budget, evaluate on the device, log the results.

:func:`check_device_run` runs before the MLflow run is opened and before any circuit is
simulated or submitted, so bad device settings and runs over budget leave nothing behind.
"""

from __future__ import annotations

from typing import Any

from mlflow.entities import Metric
from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger

from qmlops.budget import DevicePlan, plan_device_run
from qmlops.config import CircuitConfig, DeviceConfig, TrainingConfig
from qmlops.ibm_runtime import evaluate_on_ibm
from qmlops.noisy import DeviceEvaluation
from qmlops.noisy import evaluate_on_device as evaluate_on_simulated_device
from tasks.data import PreparedData
from tasks.retry import retrying_task
from tasks.tracking import TrackedRun
from tasks.training import build_classifier


def training_device(device: DeviceConfig) -> DeviceConfig | None:
    """The device settings the training needs: ``None`` when it trains on the exact path."""
    return device if device.train_on == "device" else None


@task(name="check-device-run", retries=0, cache_policy=NO_CACHE)
def check_device_run(
    prepared: PreparedData,
    circuit: CircuitConfig,
    training: TrainingConfig,
    device: DeviceConfig,
    n_classes: int,
) -> DevicePlan | None:
    """Resolve the device, check it runs the circuit, estimate the budget and refuse above it.

    Returns:
        ``None`` for the ideal device, else the checked :class:`~qmlops.budget.DevicePlan`.
    """
    plan = plan_device_run(
        device,
        build_classifier(circuit, training, device=training_device(device)),
        n_train=prepared.X_train.shape[0],
        n_validation=0 if prepared.X_val is None else prepared.X_val.shape[0],
        n_test=prepared.X_test.shape[0],
        n_features=prepared.X_train.shape[1],
        n_classes=n_classes,
    )
    if plan is not None:
        estimate = plan.estimate
        get_run_logger().info(
            "device %s: estimated %d circuits, %d shots, %d sampler calls%s",
            estimate.device,
            estimate.circuits,
            estimate.shots,
            estimate.primitive_calls,
            "" if estimate.qpu_seconds is None else f", {estimate.qpu_seconds:.1f} QPU seconds",
        )
    return plan


@retrying_task
def evaluate_on_device(
    classifier: Any, prepared: PreparedData, device: DeviceConfig, plan: DevicePlan, seed: int
) -> DeviceEvaluation:
    """Evaluate the trained weights on the device's test split (one sampler call)."""
    evaluate = evaluate_on_ibm if plan.device.is_hardware else evaluate_on_simulated_device
    result = evaluate(
        classifier,
        prepared.X_test,
        prepared.raw.y_test,
        plan.device,
        shots=device.shots,
        optimization_level=device.optimization_level,
        mitigation=device.mitigation,
        seed=seed,
    )
    mitigated = result.mitigated_metrics.get("accuracy")
    get_run_logger().info(
        "on %s: test accuracy %.3f%s; transpiled depth %d, %d two-qubit gates, layout %s; "
        "shots sampled by %s",
        result.device,
        result.metrics["accuracy"],
        "" if mitigated is None else f" ({mitigated:.3f} with readout mitigation)",
        result.transpiled["transpiled_depth"],
        result.transpiled["transpiled_two_qubit_gates"],
        result.transpiled["layout"],
        result.engine,
    )
    return result


def device_test_metrics(result: DeviceEvaluation) -> dict[str, float]:
    """The device's test metrics beside the ideal ones: ``accuracy_device[_mitigated]``, ..."""
    metrics = {f"{key}_device": value for key, value in result.metrics.items()}
    for key, value in result.mitigated_metrics.items():
        metrics[f"{key}_device_mitigated"] = value
    return metrics


def device_metrics(result: DeviceEvaluation) -> dict[str, float]:
    """MLflow metrics of a device evaluation: ``test_*_device[_mitigated]`` and transpilation."""
    metrics = {f"test_{key}": value for key, value in device_test_metrics(result).items()}
    metrics.update(
        {
            "device_transpiled_depth": result.transpiled["transpiled_depth"],
            "device_two_qubit_gates": result.transpiled["transpiled_two_qubit_gates"],
            "device_circuits": result.circuits,
            "device_primitive_calls": result.primitive_calls,
        }
    )
    return {key: float(value) for key, value in metrics.items() if value == value}  # drop NaN


@retrying_task
def log_device_results(
    run: TrackedRun, plan: DevicePlan, result: DeviceEvaluation | None = None
) -> None:
    """Log the budget estimate (without ``result``), or the device's test metrics.

    The test metrics sit next to the ideal ones: ``test_accuracy`` and ``test_accuracy_device``.
    """
    client = run.client()
    metrics = plan.estimate.metrics() if result is None else device_metrics(result)
    client.log_batch(
        run.run_id,
        metrics=[Metric(key, value, run.started_ms, 0) for key, value in metrics.items()],
    )
    if result is None:
        client.set_tag(run.run_id, "qmlops.device", plan.device.name)
    else:
        layout = ",".join(str(qubit) for qubit in result.transpiled["layout"])
        client.set_tag(run.run_id, "qmlops.device_layout", layout)
        client.set_tag(run.run_id, "qmlops.device_engine", result.engine)
