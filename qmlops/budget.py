"""Budget guard for device runs: estimate circuits, shots and QPU time; refuse above the limits.

The estimate is computed from the configuration and the data's shape alone, before any circuit is
transpiled, simulated or submitted, so a refused run leaves no job behind.

QPU time is a planning estimate for hardware, not IBM's billing: each shot costs the device's
repetition delay plus :data:`CIRCUIT_DURATION_S`, and each sampler call
:data:`JOB_OVERHEAD_S`. Both constants are assumptions chosen to err on the high side; IBM's
usage report is the real figure.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from qmlops.classifier import QuantumClassifier
from qmlops.config import DeviceConfig
from qmlops.devices import Device, NoiseParameters, check_device_fits, resolve_device
from qmlops.errors import SizeLimitError
from qmlops.noisy import CALIBRATION_CIRCUITS_PER_QUBIT, DeviceClassifier, calibration_shots
from qmlops.training import calls_per_iteration

__all__ = [
    "BudgetEstimate",
    "BudgetExceededError",
    "DevicePlan",
    "check_budget",
    "device_classifier_params",
    "estimate_device_budget",
    "plan_device_run",
]

DEFAULT_REP_DELAY_S = 250e-6
"""Repetition delay assumed where the device's configuration gives none."""
CIRCUIT_DURATION_S = 50e-6
"""Assumed duration of one shot of a classifier circuit, measurement included."""
JOB_OVERHEAD_S = 2.0
"""Assumed QPU time per sampler call beyond its shots (loading, initialisation)."""


class BudgetExceededError(SizeLimitError):
    """A device run would exceed its shot or QPU-time budget (refused before any job exists)."""


@dataclass(frozen=True)
class BudgetEstimate:
    """What a device run will execute.

    Attributes:
        device: Device name.
        circuits: Circuit executions (parameter bindings) on the device.
        shots: Total shots, readout calibration included.
        primitive_calls: Sampler calls (jobs on hardware).
        qpu_seconds: Estimated QPU time (hardware only, else ``None``).
    """

    device: str
    circuits: int
    shots: int
    primitive_calls: int
    qpu_seconds: float | None

    def metrics(self) -> dict[str, float]:
        """The estimate as ``budget_*`` metrics."""
        return {
            f"budget_{key}": float(value)
            for key, value in asdict(self).items()
            if key != "device" and value is not None
        }


def estimate_device_budget(
    device: Device,
    *,
    shots: int,
    n_qubits: int,
    evaluation_circuits: int,
    training_circuits: int = 0,
    training_calls: int = 0,
    mitigation: str = "none",
) -> BudgetEstimate:
    """Estimate a device run: training under noise (optional) and one evaluation call.

    Args:
        device: The device.
        shots: Shots per circuit.
        n_qubits: Measured qubits (readout calibration is per qubit).
        evaluation_circuits: Circuits of the evaluation (test samples).
        training_circuits: Circuits of a training on the device
            (:meth:`QuantumClassifier.plan`'s ``circuit_evaluations``).
        training_calls: Sampler calls of that training (one per optimizer step).
        mitigation: ``"readout"`` adds the calibration circuits.

    Returns:
        The :class:`BudgetEstimate`.
    """
    calibration = CALIBRATION_CIRCUITS_PER_QUBIT * n_qubits if mitigation == "readout" else 0
    circuits = training_circuits + evaluation_circuits
    total_shots = circuits * shots + calibration * calibration_shots(shots)
    calls = training_calls + 1 + (1 if calibration else 0)
    qpu_seconds = None
    if device.is_hardware:
        per_shot = (device.default_rep_delay_s or DEFAULT_REP_DELAY_S) + CIRCUIT_DURATION_S
        qpu_seconds = total_shots * per_shot + calls * JOB_OVERHEAD_S
    return BudgetEstimate(device.name, circuits + calibration, total_shots, calls, qpu_seconds)


def check_budget(
    estimate: BudgetEstimate, max_shots: int | None, max_qpu_seconds: float | None
) -> None:
    """Refuse a run whose estimate exceeds a limit (``None``: no limit).

    Raises:
        BudgetExceededError: With the estimate and the limit it exceeds.
    """
    if max_shots is not None and estimate.shots > max_shots:
        raise BudgetExceededError(
            f"{estimate.device}: the run needs an estimated {estimate.shots} shots "
            f"({estimate.circuits} circuits), above max_shots={max_shots}"
        )
    if (
        max_qpu_seconds is not None
        and estimate.qpu_seconds is not None
        and estimate.qpu_seconds > max_qpu_seconds
    ):
        raise BudgetExceededError(
            f"{estimate.device}: the run needs an estimated {estimate.qpu_seconds:.1f} QPU "
            f"seconds ({estimate.shots} shots in {estimate.primitive_calls} jobs), above "
            f"max_qpu_seconds={max_qpu_seconds:g}"
        )


@dataclass(frozen=True)
class DevicePlan:
    """A checked device run: the resolved device and its budget estimate."""

    device: Device
    estimate: BudgetEstimate


def device_of(config: DeviceConfig, environ: Mapping[str, str] | None = None) -> Device:
    """Resolve a :class:`DeviceConfig`'s device with its noise parameters."""
    noise = NoiseParameters(config.one_qubit_error, config.two_qubit_error, config.readout_error)
    return resolve_device(config.device, noise, os.environ if environ is None else environ)


def device_classifier_params(config: DeviceConfig) -> dict[str, Any]:
    """:class:`~qmlops.noisy.DeviceClassifier` parameters of a device configuration."""
    return {
        "device": config.device,
        "device_shots": config.shots,
        "optimization_level": config.optimization_level,
        "mitigation": config.mitigation,
        "one_qubit_error": config.one_qubit_error,
        "two_qubit_error": config.two_qubit_error,
        "readout_error": config.readout_error,
    }


def plan_device_run(
    config: DeviceConfig,
    classifier: QuantumClassifier,
    *,
    n_train: int,
    n_validation: int,
    n_test: int,
    n_features: int,
    n_classes: int,
    environ: Mapping[str, str] | None = None,
) -> DevicePlan | None:
    """Check a device run and its budget from the configuration and data shape alone.

    Nothing is transpiled, simulated or submitted: bad settings and runs over budget are
    refused before any circuit or job exists.

    Args:
        config: The device settings.
        classifier: The estimator as configured (a :class:`DeviceClassifier` to train on the
            device); only its :meth:`~QuantumClassifier.plan` is called.
        n_train: Training samples.
        n_validation: Validation samples.
        n_test: Test samples (evaluated on the device).
        n_features: Features (= qubits).
        n_classes: Classes.
        environ: Environment with IBM credentials (default: ``os.environ``).

    Returns:
        ``None`` for the ideal device, else the :class:`DevicePlan`.

    Raises:
        InputError: For an unknown device, missing shots or credentials, a circuit too wide
            for the device, or an estimate over ``max_shots`` / ``max_qpu_seconds``.
    """
    device = device_of(config, environ)
    if device.source == "ideal":
        return None
    check_device_fits(device, n_features, config.shots)
    assert config.shots is not None
    training_circuits = training_calls = 0
    if config.train_on == "device":
        if not isinstance(classifier, DeviceClassifier):
            raise TypeError("training on a device needs a DeviceClassifier")
        _, resources = classifier.plan(n_train, n_validation, n_features, n_classes)
        training_circuits = resources.circuit_evaluations
        # One batched sampler call per optimizer iteration (L-BFGS: per evaluation, a few
        # an iteration), plus the final point.
        training_calls = classifier.maxiter * calls_per_iteration(classifier.optimizer) + 1
    estimate = estimate_device_budget(
        device,
        shots=config.shots,
        n_qubits=n_features,
        evaluation_circuits=n_test,
        training_circuits=training_circuits,
        training_calls=training_calls,
        mitigation=config.mitigation,
    )
    check_budget(estimate, config.max_shots, config.max_qpu_seconds)
    return DevicePlan(device, estimate)
