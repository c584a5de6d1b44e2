"""Batched circuit evaluation: class probabilities for many samples and weight points at once.

Two engines compute the same numbers:

* ``aer``: qiskit-aer's V2 primitives. Exact mode (``shots=None``) uses ``EstimatorV2`` with one
  diagonal class-projector observable per class; shot mode uses ``SamplerV2``. Every request of
  an optimizer step goes into ONE primitive call, with all samples and weight points as
  parameter-value arrays bound at run time.
* ``numpy``: an exact batched statevector engine for the ansatz. The encoded feature states
  ``|phi(x)>`` do not depend on the weights, so they are computed once per data set (by Aer, in one
  call) and reused; each step then applies only the ansatz gates to all (weights, sample) pairs at
  once. It matches Aer to 1e-9 and is chosen automatically for exact evaluation of circuits up to
  :data:`NUMPY_MAX_QUBITS` qubits.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, get_args

import numpy as np
from qiskit import QuantumCircuit, transpile
from qiskit.circuit import Parameter
from qiskit.quantum_info import Operator, SparsePauliOp

from qmlops.circuits import COMPLEX_BYTES, CircuitSpec
from qmlops.errors import ConfigurationError, InputError, SimulationError

BackendName = Literal["auto", "numpy", "aer"]
BACKENDS: tuple[str, ...] = get_args(BackendName)

NUMPY_MAX_QUBITS = 16
"""Largest circuit the ``auto`` backend hands to the numpy engine."""

_NUMPY_BASIS = ["rx", "ry", "rz", "p", "h", "x", "y", "z", "s", "sdg", "sx", "cx", "cz", "swap"]
_WORK_BYTES = 64 * 2**20
_ENCODING_CACHE_SIZE = 4

Request = tuple[np.ndarray, np.ndarray] | tuple[np.ndarray, np.ndarray, np.ndarray]
"""``(features, weights[, rows])``: features ``(N, n_qubits)``, weight points ``(M, n_weights)``
and optionally the indices of the rows of ``features`` to evaluate (a mini-batch); the encoded
states of the whole ``features`` array stay cached, so mini-batches reuse them."""


def _rotation_matrices(name: str, angles: np.ndarray) -> np.ndarray:
    """Return ``(len(angles), 2, 2)`` matrices of a one-qubit rotation gate."""
    half = angles / 2.0
    cos, sin = np.cos(half), np.sin(half)
    out = np.zeros((angles.shape[0], 2, 2), dtype=np.complex128)
    if name == "ry":
        out[:, 0, 0], out[:, 0, 1], out[:, 1, 0], out[:, 1, 1] = cos, -sin, sin, cos
    elif name == "rx":
        out[:, 0, 0], out[:, 1, 1] = cos, cos
        out[:, 0, 1] = out[:, 1, 0] = -1j * sin
    elif name == "rz":
        out[:, 0, 0], out[:, 1, 1] = np.exp(-1j * half), np.exp(1j * half)
    elif name == "p":
        out[:, 0, 0], out[:, 1, 1] = 1.0, np.exp(1j * angles)
    else:  # pragma: no cover - guarded by _compile_ansatz
        raise ValueError(name)
    return out


@dataclass(frozen=True)
class _Op:
    qubits: tuple[int, ...]
    matrix: np.ndarray | None = None
    rotation: str | None = None
    weight_index: int = -1
    permutation: np.ndarray | None = None


class UnsupportedCircuitError(ConfigurationError):
    """The numpy engine cannot simulate this ansatz (use the Aer backend)."""


def _compile_ansatz(ansatz: QuantumCircuit) -> list[_Op]:
    """Lower the ansatz to gates the numpy engine applies, with weights as bare parameters."""
    lowered = transpile(ansatz, basis_gates=_NUMPY_BASIS, optimization_level=0)
    index_of = {param: i for i, param in enumerate(ansatz.parameters)}
    n_qubits = ansatz.num_qubits
    ops: list[_Op] = []
    for instruction in lowered.data:
        operation = instruction.operation
        qubits = tuple(lowered.find_bit(q).index for q in instruction.qubits)
        if operation.name == "barrier":
            continue
        if operation.params and operation.name in ("rx", "ry", "rz", "p"):
            (angle,) = operation.params
            if isinstance(angle, Parameter) and angle in index_of:
                ops.append(_Op(qubits, rotation=operation.name, weight_index=index_of[angle]))
                continue
            if not hasattr(angle, "parameters") or not angle.parameters:
                ops.append(_Op(qubits, matrix=Operator(operation).data))
                continue
            raise UnsupportedCircuitError(
                f"gate {operation.name}({angle}) is not a bare weight; use backend='aer'"
            )
        if operation.params:
            raise UnsupportedCircuitError(f"unsupported parameterised gate {operation.name}")
        matrix = Operator(operation).data
        if len(qubits) == 1:
            ops.append(_Op(qubits, matrix=matrix))
        elif len(qubits) == 2 and _is_permutation(matrix):
            ops.append(_Op(qubits, permutation=_basis_permutation(matrix, qubits, n_qubits)))
        elif len(qubits) == 2:
            ops.append(_Op(qubits, matrix=matrix))
        else:
            raise UnsupportedCircuitError(f"unsupported {len(qubits)}-qubit gate {operation.name}")
    return ops


def _is_permutation(matrix: np.ndarray) -> bool:
    return bool(
        np.all(np.isclose(matrix, 0) | np.isclose(matrix, 1))
        and np.all(np.isclose(matrix, 1).sum(axis=0) == 1)
    )


def _basis_permutation(matrix: np.ndarray, qubits: tuple[int, ...], n_qubits: int) -> np.ndarray:
    """Gather indices so that ``new[i] = old[perm[i]]`` for a 2-qubit permutation gate."""
    qa, qb = qubits
    indices = np.arange(2**n_qubits)
    local_in = ((indices >> qb) & 1) * 2 + ((indices >> qa) & 1)
    # matrix[out, in] == 1: find the input basis state that lands on each output state.
    source_local = np.argmax(np.isclose(matrix, 1), axis=1)[local_in]
    cleared = indices & ~((1 << qa) | (1 << qb))
    return cleared | ((source_local & 1) << qa) | (((source_local >> 1) & 1) << qb)


def _apply_ops(states: np.ndarray, weights: np.ndarray, ops: Sequence[_Op]) -> np.ndarray:
    """Apply the compiled ansatz to ``states (M, D, N)`` with weight points ``(M, P)``."""
    m_points, dim, n_samples = states.shape
    n_qubits = dim.bit_length() - 1
    psi = states
    for op in ops:
        if op.permutation is not None:
            psi = psi[:, op.permutation, :]
            continue
        if len(op.qubits) == 1:
            (qubit,) = op.qubits
            view = psi.reshape(m_points, dim >> (qubit + 1), 2, (1 << qubit) * n_samples)
            if op.rotation is not None:
                gate = _rotation_matrices(op.rotation, weights[:, op.weight_index])[:, None]
            else:
                assert op.matrix is not None
                gate = op.matrix
            psi = np.matmul(gate, view).reshape(m_points, dim, n_samples)
            continue
        qa, qb = op.qubits
        tensor = psi.reshape((m_points,) + (2,) * n_qubits + (n_samples,))
        axis_a, axis_b = 1 + (n_qubits - 1 - qa), 1 + (n_qubits - 1 - qb)
        assert op.matrix is not None
        gate4 = op.matrix.reshape(2, 2, 2, 2)
        tensor = np.tensordot(gate4, tensor, axes=([2, 3], [axis_b, axis_a]))
        psi = np.moveaxis(tensor, [0, 1], [axis_b, axis_a]).reshape(m_points, dim, n_samples)
    return psi


def _fingerprint(array: np.ndarray) -> str:
    return hashlib.blake2b(
        np.ascontiguousarray(array).tobytes() + str(array.shape).encode(), digest_size=16
    ).hexdigest()


def _diagonal_to_pauli(diagonal: np.ndarray, n_qubits: int) -> SparsePauliOp:
    """Express a real diagonal operator as a sum of Z strings (Walsh-Hadamard transform)."""
    coefficients = diagonal.astype(np.float64).copy()
    step = 1
    while step < coefficients.size:
        shaped = coefficients.reshape(-1, 2, step)
        low, high = shaped[:, 0, :].copy(), shaped[:, 1, :].copy()
        shaped[:, 0, :], shaped[:, 1, :] = low + high, low - high
        step *= 2
    coefficients /= coefficients.size
    keep = np.flatnonzero(np.abs(coefficients) > 1e-12)
    labels = [
        "".join("Z" if (mask >> q) & 1 else "I" for q in reversed(range(n_qubits))) for mask in keep
    ]
    return SparsePauliOp(labels, coefficients[keep])


@dataclass
class EvaluationCounters:
    """Work done by a :class:`CircuitEvaluator`."""

    primitive_calls: int = 0
    circuit_evaluations: int = 0
    encoded_samples: int = 0
    per_call_sizes: list[int] = field(default_factory=list)


class CircuitEvaluator:
    """Compute class probabilities of a :class:`CircuitSpec` for batches of inputs.

    Args:
        spec: The circuit description.
        shots: ``None`` for exact probabilities, else the number of measurement shots.
        backend: ``"auto"``, ``"numpy"`` or ``"aer"`` (see the module docstring).
        seed: Seed of the shot sampler; each call draws a fresh seed from it, so runs are
            reproducible without reusing the same shot noise at every step.
        simulator_threads: Threads Aer may use (``0``: all cores).
    """

    def __init__(
        self,
        spec: CircuitSpec,
        *,
        shots: int | None = None,
        backend: str = "auto",
        seed: int | None = None,
        simulator_threads: int = 0,
    ) -> None:
        if backend not in BACKENDS:
            raise ConfigurationError(f"unknown backend {backend!r}; choose one of {BACKENDS}")
        if shots is not None and (isinstance(shots, bool) or int(shots) < 1):
            raise ConfigurationError(f"shots must be None (exact) or >= 1, got {shots!r}")
        if backend == "numpy" and shots is not None:
            raise ConfigurationError("the numpy backend is exact only; use backend='aer' for shots")
        self.spec = spec
        self.shots = None if shots is None else int(shots)
        self.simulator_threads = int(simulator_threads)
        self.counters = EvaluationCounters()
        self._rng = np.random.default_rng(seed)
        self._feature_map = spec.feature_map_circuit()
        self._ansatz = spec.ansatz_circuit()
        self._circuit = self._feature_map.compose(self._ansatz)
        self._outcome_class = spec.class_of_outcome()
        self._encodings: OrderedDict[str, np.ndarray] = OrderedDict()
        self._ops: list[_Op] | None = None
        self.backend = self._resolve_backend(backend)

    def _resolve_backend(self, requested: str) -> str:
        if requested == "aer":
            return "aer"
        wants_numpy = requested == "numpy" or (
            self.shots is None and self.spec.n_qubits <= NUMPY_MAX_QUBITS
        )
        if not wants_numpy:
            return "aer"
        try:
            self._ops = _compile_ansatz(self._ansatz)
        except UnsupportedCircuitError:
            if requested == "numpy":
                raise
            return "aer"
        return "numpy"

    @property
    def states_held(self) -> int:
        """Statevectors this evaluator keeps in memory per cached sample (for the size guard)."""
        return 1 if self.backend == "numpy" else 0

    def class_probabilities(self, requests: Sequence[Request]) -> list[np.ndarray]:
        """Evaluate all requests in one primitive call.

        Args:
            requests: ``(features (N, n_qubits), weights (M, n_weights))`` pairs; every weight
                point is evaluated on every sample of its request.

        Returns:
            One array ``(M, N, n_classes)`` per request; each row sums to one.

        Raises:
            InputError: If an array has the wrong shape or holds NaN or infinite values.
            SimulationError: If the simulator fails or returns non-finite numbers.
        """
        checked = [self._check_request(*request) for request in requests]
        if self.backend == "numpy":
            results = self._numpy_probabilities(checked)
        elif self.shots is None:
            results = self._aer_exact_probabilities(checked)
        else:
            results = self._aer_shot_probabilities(checked)
        self.counters.primitive_calls += 1
        size = sum(len(rows) * w.shape[0] for _, w, rows in checked)
        self.counters.circuit_evaluations += size
        self.counters.per_call_sizes.append(size)
        for result in results:
            if not np.all(np.isfinite(result)):
                raise SimulationError("the simulator returned non-finite probabilities")
        return results

    def _check_request(
        self, features: np.ndarray, weights: np.ndarray, rows: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        features = np.asarray(features, dtype=np.float64)
        weights = np.asarray(weights, dtype=np.float64)
        if features.ndim != 2 or features.shape[1] != self.spec.n_qubits:
            raise InputError(
                f"features must have shape (n_samples, {self.spec.n_qubits}), got {features.shape}"
            )
        if weights.ndim != 2 or weights.shape[1] != self._ansatz.num_parameters:
            raise InputError(
                f"weights must have shape (n_points, {self._ansatz.num_parameters}), "
                f"got {weights.shape}"
            )
        if not (np.all(np.isfinite(features)) and np.all(np.isfinite(weights))):
            raise InputError("features and weights must be finite (no NaN or infinity)")
        rows = np.arange(features.shape[0]) if rows is None else np.asarray(rows, dtype=np.intp)
        return features, weights, rows

    # -- numpy engine -------------------------------------------------------------------

    def encode(self, features: np.ndarray) -> np.ndarray:
        """Return the encoded feature states ``(N, 2**n_qubits)``, cached per data set."""
        key = _fingerprint(features)
        cached = self._encodings.get(key)
        if cached is not None:
            self._encodings.move_to_end(key)
            return cached
        states = self._aer_statevectors(features)
        self._encodings[key] = states
        while len(self._encodings) > _ENCODING_CACHE_SIZE:
            self._encodings.popitem(last=False)
        self.counters.encoded_samples += features.shape[0]
        return states

    def _aer_statevectors(self, features: np.ndarray) -> np.ndarray:
        from qiskit_aer import AerSimulator

        simulator = AerSimulator(method="statevector", max_parallel_threads=self.simulator_threads)
        circuit = self._feature_map.copy()
        circuit.save_statevector()
        circuit = transpile(circuit, simulator, optimization_level=0)
        binds = {
            param: features[:, i].tolist() for i, param in enumerate(self._feature_map.parameters)
        }
        result = simulator.run(circuit, parameter_binds=[binds]).result()
        if not result.success:
            raise SimulationError(f"Aer failed to encode the features: {result.status}")
        states = np.array(
            [np.asarray(result.get_statevector(i)) for i in range(features.shape[0])],
            dtype=np.complex128,
        )
        return states.reshape(features.shape[0], 2**self.spec.n_qubits)

    def _numpy_probabilities(
        self, requests: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]]
    ) -> list[np.ndarray]:
        assert self._ops is not None
        n_classes = self.spec.n_classes
        dim = 2**self.spec.n_qubits
        onehot = np.eye(n_classes)[self._outcome_class]
        results = []
        for features, weights, rows in requests:
            encoded = self.encode(features)[rows].T  # (D, N)
            n_points, n_samples = weights.shape[0], rows.shape[0]
            out = np.empty((n_points, n_samples, n_classes))
            per_column = dim * COMPLEX_BYTES
            points_chunk = max(1, min(n_points, _WORK_BYTES // (per_column * n_samples) or 1))
            samples_chunk = max(1, min(n_samples, _WORK_BYTES // (per_column * points_chunk)))
            for p0 in range(0, n_points, points_chunk):
                w = weights[p0 : p0 + points_chunk]
                for s0 in range(0, n_samples, samples_chunk):
                    block = encoded[:, s0 : s0 + samples_chunk]
                    states = np.broadcast_to(block, (w.shape[0],) + block.shape).copy()
                    psi = _apply_ops(states, w, self._ops)
                    probs = psi.real**2 + psi.imag**2  # (m, D, n)
                    out[p0 : p0 + w.shape[0], s0 : s0 + block.shape[1]] = np.einsum(
                        "mdn,dk->mnk", probs, onehot, optimize=True
                    )
            results.append(out)
        return results

    # -- Aer primitives -----------------------------------------------------------------

    def _parameter_values(self, features: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """Parameter values ``(M, N, n_params)`` in the circuit's parameter order."""
        n_points, n_samples = weights.shape[0], features.shape[0]
        feature_index = {p: i for i, p in enumerate(self._feature_map.parameters)}
        weight_index = {p: i for i, p in enumerate(self._ansatz.parameters)}
        values = np.empty((n_points, n_samples, self._circuit.num_parameters))
        for column, param in enumerate(self._circuit.parameters):
            if param in feature_index:
                values[:, :, column] = features[None, :, feature_index[param]]
            else:
                values[:, :, column] = weights[:, None, weight_index[param]]
        return values

    def _backend_options(self) -> dict[str, object]:
        return {
            "method": "statevector",
            "max_parallel_threads": self.simulator_threads,
            "runtime_parameter_bind_enable": True,
        }

    def _aer_exact_probabilities(
        self, requests: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]]
    ) -> list[np.ndarray]:
        from qiskit_aer.primitives import EstimatorV2

        projectors = [
            _diagonal_to_pauli((self._outcome_class == k).astype(float), self.spec.n_qubits)
            for k in range(self.spec.n_classes)
        ]
        observables = np.empty((self.spec.n_classes, 1, 1), dtype=object)
        for k, projector in enumerate(projectors):
            observables[k, 0, 0] = projector
        estimator = EstimatorV2(options={"backend_options": self._backend_options()})
        pubs = [
            (self._circuit, observables, self._parameter_values(f[r], w)) for f, w, r in requests
        ]
        try:
            pub_results = estimator.run(pubs).result()
        except Exception as error:  # Aer raises bare exceptions for resource failures
            raise SimulationError(f"Aer estimator failed: {error}") from error
        results = []
        for pub_result in pub_results:
            probs = np.clip(np.moveaxis(np.asarray(pub_result.data.evs), 0, -1), 0.0, 1.0)
            results.append(probs / probs.sum(axis=-1, keepdims=True))
        return results

    def _aer_shot_probabilities(
        self, requests: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]]
    ) -> list[np.ndarray]:
        from qiskit_aer.primitives import SamplerV2

        assert self.shots is not None
        measured = self._circuit.copy()
        measured.measure_all()
        sampler = SamplerV2(
            default_shots=self.shots,
            seed=int(self._rng.integers(2**31 - 1)),
            options={"backend_options": self._backend_options()},
        )
        pubs = [(measured, self._parameter_values(f[r], w)) for f, w, r in requests]
        try:
            pub_results = sampler.run(pubs).result()
        except Exception as error:  # Aer raises bare exceptions for resource failures
            raise SimulationError(f"Aer sampler failed: {error}") from error
        n_classes = self.spec.n_classes
        results = []
        for (_, weights, rows), pub_result in zip(requests, pub_results, strict=True):
            packed = np.asarray(pub_result.data.meas.array)  # (M, N, shots, n_bytes), big-endian
            outcomes = np.zeros(packed.shape[:-1], dtype=np.int64)
            for byte in range(packed.shape[-1]):
                outcomes = (outcomes << 8) | packed[..., byte].astype(np.int64)
            classes = self._outcome_class[outcomes]  # (M, N, shots)
            n_cells = classes.shape[0] * classes.shape[1]
            flat = np.arange(n_cells).reshape(classes.shape[:2] + (1,)) * n_classes + classes
            counts = np.bincount(flat.ravel(), minlength=n_cells * n_classes)
            results.append(counts.reshape(weights.shape[0], rows.shape[0], n_classes) / self.shots)
        return results
