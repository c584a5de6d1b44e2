"""Noise-aware execution: a classifier's circuit transpiled to a device and sampled under noise.

:class:`DeviceEvaluator` is a :class:`~qmlops.simulation.CircuitEvaluator` whose shot path runs
the circuit transpiled to the device (coupling map, basis gates, layout) on the device's Aer
noise simulator (:func:`qmlops.devices.device_simulator`). The circuit is transpiled once per
circuit description, device and optimisation level; each call binds all samples and weight
points as parameter-value arrays in ONE sampler call, as on the exact path.

Readout mitigation (``mitigation="readout"``) corrects the measured counts with mthree, whose
calibration is measured once per device, physical qubits and shots. :func:`evaluate_on_device`
reports the raw and the mitigated accuracy from the same shots.

:class:`DeviceClassifier` trains a :class:`~qmlops.classifier.QuantumClassifier` under a
device's noise with shots; once trained it predicts on the exact path, so the model it stores
is an ordinary classifier (its weights) and its device results come from
:func:`evaluate_on_device`.

Devices score every readout from the measured bitstrings (classical bit ``q`` holds qubit ``q``
wherever the layout put it): ``"hamming_weight"`` as the class frequencies of the shots,
``"z_softmax"`` as each qubit's mean of ``±1`` (``"zz_softmax"``: and each neighbouring pair's
mean of the product) fed to the model's softmax head. With readout
mitigation the same values come from mthree's mitigated quasi-distribution.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

import numpy as np

from qmlops.checkpoint import CheckpointStore
from qmlops.circuits import WEIGHT_PREFIX, CircuitSpec
from qmlops.classifier import QuantumClassifier
from qmlops.devices import (
    Device,
    DeviceError,
    NoiseParameters,
    check_device_fits,
    device_backend,
    device_simulator,
    resolve_device,
)
from qmlops.errors import ConfigurationError, SimulationError
from qmlops.metrics import classification_metrics
from qmlops.noisy_engine import (
    DensityMatrixProgram,
    UnsupportedCircuitError,
    pack_outcomes,
    sample_outcomes,
)
from qmlops.simulation import CircuitEvaluator, class_frequencies, observable_means

__all__ = [
    "MITIGATIONS",
    "DeviceClassifier",
    "DeviceEvaluation",
    "DeviceEvaluator",
    "TranspiledCircuit",
    "evaluate_on_device",
    "transpile_for_device",
]

MitigationName = Literal["none", "readout"]
MITIGATIONS: tuple[str, ...] = get_args(MitigationName)
SEED_TRANSPILER = 0
"""Fixed, so a circuit description maps to one layout (and one cache entry)."""
CALIBRATION_SHOTS_MIN = 1000
CALIBRATION_CIRCUITS_PER_QUBIT = 2
"""mthree's independent calibration prepares each measured qubit in 0 and in 1."""


def calibration_shots(shots: int) -> int:
    """Shots per readout-calibration circuit: the run's shots, at least 1000."""
    return max(shots, CALIBRATION_SHOTS_MIN)


EngineName = Literal["numpy-density-matrix", "aer", "given-sampler"]
DENSITY_MATRIX_ENGINE: EngineName = "numpy-density-matrix"
AER_ENGINE: EngineName = "aer"
GIVEN_SAMPLER: EngineName = "given-sampler"
"""The caller's ``sample_fn`` samples (IBM runtime on hardware)."""

SampleFn = Callable[[Sequence[tuple[Any, np.ndarray]], int, int], list[np.ndarray]]
"""``(pubs, shots, seed) -> packed measurement bits per pub``: one call to a sampler."""


@dataclass(frozen=True)
class TranspiledCircuit:
    """A measured classifier circuit in a device's native gates and layout.

    Attributes:
        circuit: The transpiled circuit (parameters left free).
        depth: Depth of the transpiled circuit.
        two_qubit_gates: Two-qubit gates after transpilation.
        layout: Physical qubit measured into each classical bit (bit 0 first).
        optimization_level: Transpiler optimisation level used.
    """

    circuit: Any
    depth: int
    two_qubit_gates: int
    layout: tuple[int, ...]
    optimization_level: int

    def summary(self) -> dict[str, Any]:
        """Plain numbers to log: depth, two-qubit gates, layout, optimisation level."""
        return {
            "transpiled_depth": self.depth,
            "transpiled_two_qubit_gates": self.two_qubit_gates,
            "layout": list(self.layout),
            "optimization_level": self.optimization_level,
        }


def measured_circuit(spec: CircuitSpec) -> Any:
    """The whole classifier circuit (every upload) and a final measurement of every qubit."""
    circuit = spec.circuit()
    circuit.measure_all()
    return circuit


def _two_qubit_gates(circuit: Any) -> int:
    return sum(
        1
        for instruction in circuit.data
        if instruction.operation.num_qubits == 2 and instruction.operation.name != "barrier"
    )


@functools.lru_cache(maxsize=64)
def transpile_for_device(
    device: Device, spec: CircuitSpec, optimization_level: int = 1, target: Any = None
) -> TranspiledCircuit:
    """Transpile a classifier's measured circuit to a device, once per description.

    Args:
        device: A simulated (or, with ``target``, any) device.
        spec: The circuit description.
        optimization_level: Qiskit's preset level, 0 to 3.
        target: Backend to transpile for (default: :func:`qmlops.devices.device_backend`).

    Raises:
        ConfigurationError: If the optimisation level is not 0 to 3.
    """
    from qiskit.transpiler import generate_preset_pass_manager

    if isinstance(optimization_level, bool) or optimization_level not in (0, 1, 2, 3):
        raise ConfigurationError(
            f"optimization_level must be 0, 1, 2 or 3, got {optimization_level!r}"
        )
    backend = device_backend(device) if target is None else target
    manager = generate_preset_pass_manager(
        optimization_level=optimization_level, backend=backend, seed_transpiler=SEED_TRANSPILER
    )
    circuit = manager.run(measured_circuit(spec))
    mapping = {
        circuit.find_bit(item.clbits[0]).index: circuit.find_bit(item.qubits[0]).index
        for item in circuit.data
        if item.operation.name == "measure"
    }
    return TranspiledCircuit(
        circuit=circuit,
        depth=int(circuit.depth()),
        two_qubit_gates=_two_qubit_gates(circuit),
        layout=tuple(int(mapping[bit]) for bit in range(spec.n_qubits)),
        optimization_level=optimization_level,
    )


def calibrated_mitigator(
    system: Any, layout: tuple[int, ...], shots: int, runtime_mode: Any = None
) -> Any:
    """An mthree mitigator calibrated on ``system`` for these physical qubits.

    Args:
        system: A simulator or backend that runs the calibration circuits.
        layout: Physical qubits measured.
        shots: The run's shots (see :func:`calibration_shots`).
        runtime_mode: IBM runtime Batch or Session the calibration jobs run in (hardware).
    """
    import mthree

    mitigator = mthree.M3Mitigation(system)
    mitigator.cals_from_system(
        list(layout),
        shots=calibration_shots(shots),
        method="independent",
        async_cal=False,
        runtime_mode=runtime_mode,
    )
    return mitigator


@functools.lru_cache(maxsize=16)
def _simulator_mitigator(device: Device, layout: tuple[int, ...], shots: int) -> Any:
    """Calibrated once per simulated device, physical qubits and shots (the noise is fixed)."""
    return calibrated_mitigator(device_simulator(device), layout, shots)


@functools.lru_cache(maxsize=16)
def _density_matrix_program(
    device: Device, spec: CircuitSpec, optimization_level: int
) -> DensityMatrixProgram | None:
    """The device circuit lowered for the numpy engine, or ``None`` where Aer must sample it."""
    transpiled = transpile_for_device(device, spec, optimization_level)
    circuit = transpiled.circuit
    point_columns = [
        i
        for i, parameter in enumerate(circuit.parameters)
        if parameter.name.startswith(WEIGHT_PREFIX)
    ]
    try:
        return DensityMatrixProgram(
            circuit, device_simulator(device).options.noise_model, point_columns
        )
    except UnsupportedCircuitError:
        return None


def _aer_sample_fn(device: Device, threads: int) -> SampleFn:
    def sample(pubs: Sequence[tuple[Any, np.ndarray]], shots: int, seed: int) -> list[np.ndarray]:
        from qiskit_aer.primitives import SamplerV2

        sampler = SamplerV2.from_backend(
            device_simulator(device),
            default_shots=shots,
            seed=seed,
            # Aer's runtime parameter binding returns no memory under a noise model.
            options={"run_options": {"max_parallel_threads": threads}},
        )
        results = sampler.run(list(pubs)).result()
        return [np.asarray(result.data.meas.array) for result in results]

    return sample


class DeviceEvaluator(CircuitEvaluator):
    """Class probabilities of a circuit sampled on a device (see the module docstring).

    Args:
        spec: The circuit description.
        device: A resolved device other than ``ideal``.
        shots: Measurement shots per circuit (required).
        seed: Seeds the sampler (a fresh seed per call).
        optimization_level: Transpiler optimisation level, 0 to 3.
        mitigation: ``"none"`` or ``"readout"`` (mthree).
        simulator_threads: Threads Aer may use (``0``: automatic).
        sample_fn: Runs one sampler call (default: the numpy density-matrix engine where it
            applies, else the device's Aer noise simulator); :mod:`qmlops.ibm_runtime` passes
            the IBM runtime's.
        target: Backend to transpile for (default: the device's fake or generic backend); on
            hardware, readout calibration runs there too.
        runtime_mode: IBM runtime Batch or Session of the hardware calibration jobs.

    Attributes:
        engine: ``"numpy-density-matrix"`` where a simulated device's circuit has at most
            :data:`qmlops.noisy_engine.MAX_ENGINE_QUBITS` active qubits and the lowering knows
            all of it (exact outcome probabilities under the device's Aer noise model, shots
            drawn from them); ``"given-sampler"`` with ``sample_fn`` (IBM hardware); ``"aer"``
            otherwise (the device's Aer noise simulator samples).

    Raises:
        ShotsRequiredError: If ``shots`` is ``None``.
        DeviceTooSmallError: If the device has fewer qubits than the circuit.
        DeviceError: For the ``ideal`` device, or a hardware device without ``sample_fn``.
    """

    def __init__(
        self,
        spec: CircuitSpec,
        device: Device,
        *,
        shots: int | None,
        seed: int | None = None,
        optimization_level: int = 1,
        mitigation: str = "none",
        simulator_threads: int = 0,
        sample_fn: SampleFn | None = None,
        target: Any = None,
        runtime_mode: Any = None,
    ) -> None:
        if device.source == "ideal":
            raise DeviceError("the ideal device runs on the exact path, not a DeviceEvaluator")
        if device.is_hardware and sample_fn is None:
            raise DeviceError(f"{device.name} runs through qmlops.ibm_runtime, not a simulator")
        if mitigation not in MITIGATIONS:
            raise ConfigurationError(
                f"unknown mitigation {mitigation!r}; choose one of {', '.join(MITIGATIONS)}"
            )
        check_device_fits(device, spec.n_qubits, shots)
        super().__init__(
            spec, shots=shots, backend="aer", seed=seed, simulator_threads=simulator_threads
        )
        self.device = device
        self.backend = device.name
        self.optimization_level = optimization_level
        self.mitigation = mitigation
        self._sample_fn = sample_fn
        self._target = target
        self._runtime_mode = runtime_mode
        self._hardware_mitigator: Any = None
        self.transpiled = transpile_for_device(device, spec, optimization_level, target)
        self._columns = self._transpiled_columns()
        self.engine: EngineName = AER_ENGINE if sample_fn is None else GIVEN_SAMPLER
        if sample_fn is None and target is None and self._program() is not None:
            self.engine = DENSITY_MATRIX_ENGINE

    def _program(self) -> DensityMatrixProgram | None:
        return _density_matrix_program(self.device, self.spec, self.optimization_level)

    def __getstate__(self) -> dict[str, object]:
        # A sampler may hold a runtime session; unpickled evaluators sample on Aer.
        state = super().__getstate__()
        state["_sample_fn"] = None
        state["_target"] = None
        state["_runtime_mode"] = None
        state["_hardware_mitigator"] = None
        return state

    def _transpiled_columns(self) -> np.ndarray:
        """Column of :meth:`_parameter_values` feeding each parameter of the transpiled circuit."""
        position = {p.name: i for i, p in enumerate(self._circuit.parameters)}
        try:
            return np.array([position[p.name] for p in self.transpiled.circuit.parameters])
        except KeyError as error:
            raise SimulationError(f"the transpiler introduced a parameter {error}") from None

    def sample(
        self, requests: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]]
    ) -> list[np.ndarray]:
        """Sample every request in one sampler call; packed bits ``(M, N, shots, n_bytes)``."""
        assert self.shots is not None
        if self.engine == DENSITY_MATRIX_ENGINE:
            seed = int(self._rng.integers(2**31 - 1))
            probabilities = self.outcome_probabilities(requests)
            return [
                pack_outcomes(sample_outcomes(p, self.shots, seed + i), self.spec.n_qubits)
                for i, p in enumerate(probabilities)
            ]
        sample_fn = self._sample_fn or _aer_sample_fn(self.device, self.threads)
        pubs = [
            (self.transpiled.circuit, self._parameter_values(f[r], w)[..., self._columns])
            for f, w, r in requests
        ]
        try:
            return sample_fn(pubs, self.shots, int(self._rng.integers(2**31 - 1)))
        except (ConfigurationError, SimulationError):
            raise
        except Exception as error:  # samplers raise bare exceptions for resource failures
            raise SimulationError(f"sampling on {self.device.name} failed: {error}") from error

    def outcome_probabilities(
        self, requests: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]]
    ) -> list[np.ndarray]:
        """Exact measured-outcome probabilities before shots, ``(M, N, 2**n_qubits)`` each.

        Readout error included; outcome ``k`` holds classical bit ``c`` as bit ``c`` of ``k``.

        Raises:
            DeviceError: If this evaluator samples on Aer (see :attr:`engine`).
        """
        program = self._program()
        if self.engine != DENSITY_MATRIX_ENGINE or program is None:
            raise DeviceError(f"{self.device.name} samples on Aer here, not the numpy engine")
        return [
            program.probabilities(self._parameter_values(f[r], w)[..., self._columns])
            for f, w, r in requests
        ]

    def raw_values(self, packed: np.ndarray) -> np.ndarray:
        """The readout's values estimated from the measured shots, ``(M, N, R)``.

        Class frequencies for ``"hamming_weight"``; for the softmax readouts every observable's
        mean of ``±1`` (each qubit's Z, and for ``"zz_softmax"`` each neighbouring pair's
        product; see :meth:`CircuitEvaluator.readout_values`).
        """
        if self.class_readout.has_head:
            return observable_means(packed, self.class_readout.observables())
        return class_frequencies(packed, self._outcome_class, self.spec.n_classes)

    def mitigated_values(self, packed: np.ndarray) -> np.ndarray:
        """The readout's values after mthree readout mitigation, ``(M, N, R)``.

        Class probabilities come from the nearest probability distribution to each mitigated
        quasi-distribution; Pauli-Z expectations from the quasi-distribution itself (mthree's
        expectation values), clipped to ``[-1, 1]``.
        """
        from qiskit.primitives import BitArray

        assert self.shots is not None
        if self._target is not None and self.device.is_hardware:
            # A QPU's readout drifts: calibrate once per evaluator, in the run's batch.
            if self._hardware_mitigator is None:
                self._hardware_mitigator = calibrated_mitigator(
                    self._target, self.transpiled.layout, self.shots, self._runtime_mode
                )
            mitigator = self._hardware_mitigator
        else:
            mitigator = _simulator_mitigator(self.device, self.transpiled.layout, self.shots)
        bits = BitArray(packed, self.spec.n_qubits)
        cells = list(np.ndindex(*packed.shape[:2]))
        quasis = mitigator.apply_correction(
            [bits[index].get_counts() for index in cells], list(self.transpiled.layout)
        )
        if self.class_readout.has_head:
            signs = self.class_readout.observables()  # (R, 2**n_qubits) of ±1
            out = np.zeros(packed.shape[:2] + (self.class_readout.n_values,))
            for index, quasi in zip(cells, quasis, strict=True):
                # Keys are bitstrings with classical bit 0 rightmost, as the counts were.
                outcomes = np.array([int(bitstring, 2) for bitstring in quasi], dtype=np.int64)
                weights = np.array(list(quasi.values()), dtype=np.float64)
                out[index] = signs[:, outcomes] @ weights / weights.sum()
            return np.clip(out, -1.0, 1.0)
        out = np.zeros(packed.shape[:2] + (self.spec.n_classes,))
        for index, quasi in zip(cells, quasis, strict=True):
            for bitstring, probability in quasi.nearest_probability_distribution().items():
                out[index + (self._outcome_class[int(bitstring, 2)],)] += probability
        return out / out.sum(axis=-1, keepdims=True)

    def raw_probabilities(self, packed: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """Class probabilities of the measured shots, ``(M, N, n_classes)``.

        Args:
            packed: Packed measurement bits ``(M, N, shots, n_bytes)`` of :meth:`sample`.
            weights: The ``M`` weight points sampled, ``(M, n_weights)``: the head's weights
                (their trailing part) turn ``"z_softmax"`` values into probabilities.
        """
        return self._apply_head(self.raw_values(packed), np.atleast_2d(weights))

    def mitigated_probabilities(self, packed: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """As :meth:`raw_probabilities`, after mthree readout mitigation."""
        return self._apply_head(self.mitigated_values(packed), np.atleast_2d(weights))

    def _aer_shot_values(
        self, requests: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]]
    ) -> list[np.ndarray]:
        packed = self.sample(requests)
        if self.mitigation == "readout":
            return [self.mitigated_values(p) for p in packed]
        return [self.raw_values(p) for p in packed]


@dataclass
class DeviceEvaluation:
    """A trained classifier's test results on a device.

    Attributes:
        device: Device name.
        shots: Shots per circuit.
        metrics: Test metrics from the raw shots (``accuracy``, ...).
        mitigated_metrics: The same after readout mitigation (empty without mitigation).
        transpiled: Depth, two-qubit gates, layout and optimisation level.
        circuits: Circuits executed.
        primitive_calls: Sampler calls.
        engine: What sampled the shots (see :attr:`DeviceEvaluator.engine`).
    """

    device: str
    shots: int
    metrics: dict[str, float]
    mitigated_metrics: dict[str, float] = field(default_factory=dict)
    transpiled: dict[str, Any] = field(default_factory=dict)
    circuits: int = 0
    primitive_calls: int = 0
    engine: str = AER_ENGINE


def evaluate_on_device(
    classifier: QuantumClassifier,
    X: np.ndarray,
    y: np.ndarray,
    device: Device,
    *,
    shots: int | None,
    optimization_level: int = 1,
    mitigation: str = "none",
    seed: int = 0,
    sample_fn: SampleFn | None = None,
    target: Any = None,
    runtime_mode: Any = None,
) -> DeviceEvaluation:
    """Evaluate a fitted classifier's weights on a device with one sampler call.

    With ``mitigation="readout"`` the same shots are scored raw and mitigated.

    Raises:
        InputError: For a device, shots or mitigation the circuit cannot run with.
        SimulationError: If the sampler fails.
    """
    evaluator = DeviceEvaluator(
        classifier.spec_,
        device,
        shots=shots,
        seed=seed,
        optimization_level=optimization_level,
        mitigation=mitigation,
        sample_fn=sample_fn,
        target=target,
        runtime_mode=runtime_mode,
    )
    X = np.asarray(X, dtype=np.float64)
    weights = classifier.weights_[None, :]
    # Sampled with the circuit's weights; the head's (if any) apply to the measured values.
    checked = [evaluator._circuit_part(evaluator._check_request(X, weights))]
    (packed,) = evaluator.sample(checked)
    evaluator.counters.primitive_calls += 1
    evaluator.counters.circuit_evaluations += X.shape[0]
    classes = classifier.classes_

    def score(probabilities: np.ndarray) -> dict[str, float]:
        if not np.all(np.isfinite(probabilities)):
            raise SimulationError("the device returned non-finite probabilities")
        return classification_metrics(
            np.asarray(y), classes[probabilities.argmax(axis=1)], probabilities, classes
        )

    assert evaluator.shots is not None
    return DeviceEvaluation(
        device=device.name,
        shots=evaluator.shots,
        metrics=score(evaluator.raw_probabilities(packed, weights)[0]),
        mitigated_metrics=(
            score(evaluator.mitigated_probabilities(packed, weights)[0])
            if mitigation == "readout"
            else {}
        ),
        transpiled=evaluator.transpiled.summary(),
        circuits=evaluator.counters.circuit_evaluations,
        primitive_calls=evaluator.counters.primitive_calls,
        engine=evaluator.engine,
    )


DEVICE_PARAMS: tuple[str, ...] = (
    "device",
    "device_shots",
    "optimization_level",
    "mitigation",
    "one_qubit_error",
    "two_qubit_error",
    "readout_error",
)


class DeviceClassifier(QuantumClassifier):
    """A :class:`~qmlops.classifier.QuantumClassifier` trained under a device's noise.

    Every training evaluation samples the circuit transpiled to the device with
    ``device_shots`` shots; after ``fit`` the classifier predicts on the exact path and
    :meth:`to_state` stores an ordinary classifier (no device parameters).

    Args:
        device: A simulated device name (see :mod:`qmlops.devices`).
        device_shots: Shots per circuit during training.
        optimization_level: Transpiler optimisation level, 0 to 3.
        mitigation: ``"none"`` or ``"readout"``.
        one_qubit_error: ``noise:depolarizing`` one-qubit gate error.
        two_qubit_error: ``noise:depolarizing`` two-qubit gate error.
        readout_error: ``noise:depolarizing`` readout error.
        **params: :class:`~qmlops.classifier.QuantumClassifier` parameters.

    Attributes:
        device_: The resolved :class:`~qmlops.devices.Device`.
        transpiled_: Depth, two-qubit gates and layout of the trained circuit on the device.
        engine_: What sampled the training shots (see :attr:`DeviceEvaluator.engine`).
    """

    def __init__(
        self,
        device: str = "fake_manila",
        device_shots: int | None = 1024,
        optimization_level: int = 1,
        mitigation: str = "none",
        one_qubit_error: float = 0.001,
        two_qubit_error: float = 0.01,
        readout_error: float = 0.02,
        **params: Any,
    ) -> None:
        super().__init__(**params)
        self.device = device
        self.device_shots = device_shots
        self.optimization_level = optimization_level
        self.mitigation = mitigation
        self.one_qubit_error = one_qubit_error
        self.two_qubit_error = two_qubit_error
        self.readout_error = readout_error

    @classmethod
    def _get_param_names(cls) -> list[str]:
        # The estimator's own parameters come through **params; scikit-learn's get_params and
        # clone need their names listed.
        return sorted({*QuantumClassifier._get_param_names(), *DEVICE_PARAMS})

    def _device(self) -> Device:
        noise = NoiseParameters(self.one_qubit_error, self.two_qubit_error, self.readout_error)
        return resolve_device(self.device, noise)

    def plan(self, n_samples: int, n_validation: int, n_features: int, n_classes: int) -> Any:
        """As :meth:`QuantumClassifier.plan`, and check the device runs the circuit."""
        if self.optimizer == "lbfgs":
            raise ConfigurationError(
                "optimizer='lbfgs' needs exact gradients; training on a device samples shots: "
                "use adam or spsa there"
            )
        spec, estimate = super().plan(n_samples, n_validation, n_features, n_classes)
        device = self._device()
        if device.is_hardware:
            raise DeviceError("training on IBM hardware is not supported; train on a simulator")
        check_device_fits(device, n_features, self.device_shots)
        return spec, estimate

    def _evaluator(self, spec: CircuitSpec, seed: int) -> CircuitEvaluator:
        if getattr(self, "_training", False):
            return DeviceEvaluator(
                spec,
                self._device(),
                shots=self.device_shots,
                seed=seed,
                optimization_level=self.optimization_level,
                mitigation=self.mitigation,
                simulator_threads=self.simulator_threads,
            )
        return super()._evaluator(spec, seed)

    def fit(
        self,
        X: Any,
        y: Any,
        validation_data: tuple[Any, Any] | None = None,
        checkpoint: CheckpointStore | None = None,
    ) -> DeviceClassifier:
        """Train under the device's noise, then switch predictions to the exact path."""
        self._training = True
        try:
            super().fit(X, y, validation_data=validation_data, checkpoint=checkpoint)
        finally:
            self._training = False
        trained_on = self._evaluator_
        assert isinstance(trained_on, DeviceEvaluator)
        self.device_ = trained_on.device
        self.transpiled_ = trained_on.transpiled.summary()
        self.engine_ = trained_on.engine
        self.backend_ = trained_on.backend
        self._evaluator_ = super()._evaluator(self.spec_, seed=0)
        return self

    def to_state(self) -> dict[str, Any]:
        """The fitted model as an ordinary :class:`QuantumClassifier` state."""
        state = super().to_state()
        state["params"] = {k: v for k, v in state["params"].items() if k not in DEVICE_PARAMS}
        return state
