"""Exact batched statevector kernels of the numpy engine.

A circuit is lowered once (cached per circuit description) to a short program of operations on
a batch of statevectors held as one array ``(M, 2**n, L)``: ``M`` weight points, the basis states,
and ``L`` columns (samples). Qubit ``q`` is bit ``q`` of the basis-state index, as in Qiskit.
Every operation is a handful of whole-array numpy expressions on strided views:

* one-qubit gates mix the two halves of the state selected by the qubit's bit; diagonal gates
  (``p``, ``rz``, ``z``, ``s``...) only scale them;
* permutation gates (``cx``, ``swap``, ``x``...) move slices instead of multiplying;
* a rotation's angle is a trainable weight (one value per weight point) or a feature expression
  of the encoding circuit (one value per sample, evaluated once per data set).

No BLAS call is made while a program runs, so the engine's own worker threads are the only
threads it starts (see :func:`resolve_threads`). When every operation of a program is real
(``ry``, ``cx``...), it runs on the float64 view of the complex array, halving the arithmetic.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
from qiskit import QuantumCircuit, transpile
from qiskit.circuit import Parameter, ParameterExpression
from qiskit.quantum_info import Operator

from qmlops.errors import ConfigurationError

NUMPY_BASIS = ["rx", "ry", "rz", "p", "h", "x", "y", "z", "s", "sdg", "sx", "cx", "cz", "swap"]
_ROTATIONS = ("rx", "ry", "rz", "p")


class UnsupportedCircuitError(ConfigurationError):
    """The numpy engine cannot simulate this circuit (use the Aer backend)."""


# -- thread budget ------------------------------------------------------------------------


def available_cores() -> int:
    """CPU cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not on Linux
        return max(1, os.cpu_count() or 1)


def threadpool_limit() -> int | None:
    """The smallest thread limit threadpoolctl reports for a threaded BLAS or OpenMP library.

    ``threadpoolctl.threadpool_limits(n)`` (or ``OMP_NUM_THREADS``/``OPENBLAS_NUM_THREADS``)
    lowers it; ``None`` if no such library is loaded.
    """
    from threadpoolctl import threadpool_info

    limits = [
        int(info["num_threads"])
        for info in threadpool_info()
        if info.get("threading_layer") != "disabled" and info.get("num_threads")
    ]
    return min(limits) if limits else None


def resolve_threads(requested: int) -> int:
    """Threads a simulation may use.

    Args:
        requested: A positive count is used as given; ``0`` means automatic: the cores this
            process may use, capped by the current threadpoolctl limit (so a caller that runs
            several trainings at once under ``threadpool_limits(1)`` gets one thread each).

    Returns:
        At least 1.
    """
    if requested > 0:
        return int(requested)
    limit = threadpool_limit()
    cores = available_cores()
    return max(1, cores if limit is None else min(cores, limit))


# -- compiled programs --------------------------------------------------------------------


@dataclass(frozen=True)
class Operation:
    """One lowered gate.

    Attributes:
        qubits: Qubits it acts on (one or two).
        kind: ``"matrix"`` (fixed unitary), ``"diagonal"`` (fixed diagonal), ``"permutation"``
            (fixed basis permutation), ``"weight"`` or ``"feature"`` (parameterised rotation).
        matrix: The fixed unitary (``"matrix"``), the diagonal (``"diagonal"``), or for a
            permutation the source local basis state of each output local basis state.
        rotation: ``"rx"``, ``"ry"``, ``"rz"`` or ``"p"`` for parameterised rotations.
        index: Weight index (``"weight"``) or feature-expression index (``"feature"``).
    """

    qubits: tuple[int, ...]
    kind: str
    matrix: np.ndarray | None = None
    rotation: str = ""
    index: int = -1

    @property
    def is_real(self) -> bool:
        """Whether the operation maps real amplitudes to real amplitudes."""
        if self.kind in ("weight", "feature"):
            return self.rotation == "ry"
        if self.kind == "permutation":
            return True
        assert self.matrix is not None
        return bool(np.all(np.isreal(self.matrix)))


@dataclass(frozen=True)
class Program:
    """A circuit lowered for the numpy engine.

    Attributes:
        n_qubits: Circuit width.
        operations: The lowered gates, in order.
        expressions: Feature expressions whose per-sample values drive ``"feature"`` rotations.
        features: The circuit's feature parameters, in input-column order.
    """

    n_qubits: int
    operations: tuple[Operation, ...]
    expressions: tuple[ParameterExpression, ...] = ()
    features: tuple[Parameter, ...] = ()

    @functools.cached_property
    def is_real(self) -> bool:
        """Whether every operation is real, so the program may run on float64 views."""
        return all(op.is_real for op in self.operations)

    @property
    def n_operations(self) -> int:
        """Gate count (a cost estimate)."""
        return len(self.operations)

    def feature_angles(self, features: np.ndarray) -> np.ndarray:
        """Evaluate the feature expressions on every sample: ``(n_expressions, N)``."""
        angles = np.empty((len(self.expressions), features.shape[0]))
        for column, row in enumerate(features.tolist()):
            binding = dict(zip(self.features, row, strict=True))
            for i, expression in enumerate(self.expressions):
                angles[i, column] = expression.bind_all(binding)
        return angles


def compile_program(
    circuit: QuantumCircuit,
    weights: Sequence[Parameter] = (),
    features: Sequence[Parameter] = (),
) -> Program:
    """Lower a circuit to a :class:`Program`.

    Args:
        circuit: The circuit (no measurements).
        weights: Parameters that become per-weight-point rotations, in weight order.
        features: Parameters of per-sample feature expressions, in input-column order.

    Returns:
        The program.

    Raises:
        UnsupportedCircuitError: If a gate cannot be lowered (a weight inside an expression,
            a three-qubit gate, a parameterised gate other than a rotation).
    """
    lowered = transpile(circuit, basis_gates=NUMPY_BASIS, optimization_level=0)
    weight_index = {param: i for i, param in enumerate(weights)}
    feature_set = set(features)
    expressions: dict[str, tuple[int, ParameterExpression]] = {}
    operations: list[Operation] = []
    for instruction in lowered.data:
        gate = instruction.operation
        qubits = tuple(lowered.find_bit(q).index for q in instruction.qubits)
        if gate.name == "barrier":
            continue
        if gate.params and gate.name in _ROTATIONS:
            (angle,) = gate.params
            free = set(getattr(angle, "parameters", ()))
            if isinstance(angle, Parameter) and angle in weight_index:
                operations.append(Operation(qubits, "weight", None, gate.name, weight_index[angle]))
                continue
            if free and free <= feature_set:
                key = str(angle)
                index = expressions.setdefault(key, (len(expressions), angle))[0]
                operations.append(Operation(qubits, "feature", None, gate.name, index))
                continue
            if free:
                raise UnsupportedCircuitError(
                    f"gate {gate.name}({angle}) is neither a bare weight nor a feature expression"
                )
        elif gate.params:
            raise UnsupportedCircuitError(f"unsupported parameterised gate {gate.name}")
        operations.append(_fixed_operation(qubits, Operator(gate).data))
    return Program(
        n_qubits=circuit.num_qubits,
        operations=tuple(operations),
        expressions=tuple(expression for _, expression in expressions.values()),
        features=tuple(features),
    )


def _fixed_operation(qubits: tuple[int, ...], matrix: np.ndarray) -> Operation:
    if len(qubits) > 2:
        raise UnsupportedCircuitError(f"unsupported {len(qubits)}-qubit gate")
    ones = np.isclose(np.abs(matrix), 1.0)
    zeros = np.isclose(matrix, 0.0)
    if np.all(zeros | np.isclose(matrix, 1.0)) and np.all(ones.sum(axis=1) == 1):
        # matrix[out, in] == 1: the input basis state that lands on each output state.
        return Operation(qubits, "permutation", np.argmax(ones, axis=1))
    if np.all(zeros | np.eye(matrix.shape[0], dtype=bool)):
        return Operation(qubits, "diagonal", np.diag(matrix).copy())
    return Operation(qubits, "matrix", matrix)


# -- kernels ------------------------------------------------------------------------------


def _rotation_entries(name: str, angles: np.ndarray) -> tuple[Any, Any, Any, Any]:
    """The entries ``(m00, m01, m10, m11)`` of a rotation; ``None`` marks a zero entry."""
    half = angles / 2.0
    if name == "ry":
        cos, sin = np.cos(half), np.sin(half)
        return cos, -sin, sin, cos
    if name == "rx":
        cos, sin = np.cos(half), -1j * np.sin(half)
        return cos, sin, sin, cos
    if name == "rz":
        return np.exp(-1j * half), None, None, np.exp(1j * half)
    return None, None, None, np.exp(1j * angles)  # p: m00 == 1


def _one_qubit_view(psi: np.ndarray, qubit: int) -> np.ndarray:
    m_points, dim, columns = psi.shape
    return psi.reshape(m_points, dim >> (qubit + 1), 2, 1 << qubit, columns)


def _two_qubit_view(psi: np.ndarray, qa: int, qb: int) -> tuple[np.ndarray, Callable]:
    """View ``psi`` with separate axes for two qubits; returns it and a local-state indexer."""
    m_points, dim, columns = psi.shape
    high, low = max(qa, qb), min(qa, qb)
    view = psi.reshape(m_points, dim >> (high + 1), 2, 1 << (high - low - 1), 2, 1 << low, columns)

    def local(state: int) -> tuple[Any, ...]:
        # Local basis state (bit 0 = qubits[0], bit 1 = qubits[1]) as an index of `view`.
        bit = {qa: state & 1, qb: (state >> 1) & 1}
        return (slice(None), slice(None), bit[high], slice(None), bit[low])

    return view, local


def _mix_pair(
    low: np.ndarray, high: np.ndarray, entries: tuple[Any, Any, Any, Any]
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """New values of a pair of half-states under a 2x2 matrix; ``None`` where unchanged."""
    m00, m01, m10, m11 = entries
    if m01 is None and m10 is None:  # diagonal: scale in place
        if m00 is not None:
            low *= m00
        if m11 is not None:
            high *= m11
        return None, None
    new_low = low * m00
    new_low += high * m01
    new_high = low * m10
    new_high += high * m11
    return new_low, new_high


def _apply_one_qubit(psi: np.ndarray, qubit: int, entries: tuple[Any, Any, Any, Any]) -> None:
    view = _one_qubit_view(psi, qubit)
    low, high = view[:, :, 0], view[:, :, 1]
    new_low, new_high = _mix_pair(low, high, entries)
    if new_low is not None:
        low[...] = new_low
        high[...] = new_high


def _apply_permutation(psi: np.ndarray, operation: Operation) -> None:
    assert operation.matrix is not None
    source = operation.matrix
    moved = [out for out in range(source.shape[0]) if source[out] != out]
    if len(operation.qubits) == 1:
        view = _one_qubit_view(psi, operation.qubits[0])
        saved = {state: view[:, :, state].copy() for state in moved}
        for out in moved:
            view[:, :, out] = saved[source[out]]
        return
    view, local = _two_qubit_view(psi, *operation.qubits)
    saved = {state: view[local(state)].copy() for state in set(source[moved].tolist())}
    for out in moved:
        view[local(out)] = saved[source[out]]


def _apply_two_qubit(psi: np.ndarray, operation: Operation) -> None:
    assert operation.matrix is not None
    view, local = _two_qubit_view(psi, *operation.qubits)
    if operation.kind == "diagonal":
        for state, factor in enumerate(operation.matrix):
            if factor != 1:
                view[local(state)] *= factor
        return
    old = [view[local(state)].copy() for state in range(4)]
    for out in range(4):
        total = np.zeros_like(old[0])
        for state in range(4):
            if operation.matrix[out, state] != 0:
                total += operation.matrix[out, state] * old[state]
        view[local(out)] = total


def _fixed_entries(operation: Operation) -> tuple[Any, Any, Any, Any]:
    matrix = operation.matrix
    assert matrix is not None
    if operation.kind == "diagonal":
        return (
            None if matrix[0] == 1 else matrix[0],
            None,
            None,
            None if matrix[1] == 1 else matrix[1],
        )
    return matrix[0, 0], matrix[0, 1], matrix[1, 0], matrix[1, 1]


def run_program(
    program: Program,
    psi: np.ndarray,
    weights: np.ndarray | None = None,
    feature_angles: np.ndarray | None = None,
) -> np.ndarray:
    """Apply a program in place to a batch of states.

    Args:
        program: The lowered circuit.
        psi: States ``(M, 2**n, L)``: complex, or the float64 view of complex states (``2L``
            columns) when ``program.is_real``. Modified in place.
        weights: Weight points ``(M, P)`` for ``"weight"`` rotations.
        feature_angles: Per-column angles ``(n_expressions, L)`` for ``"feature"`` rotations
            (complex states only).

    Returns:
        ``psi``.
    """
    for operation in program.operations:
        if operation.kind == "weight":
            assert weights is not None
            angles = weights[:, operation.index].reshape(-1, 1, 1, 1)
            _apply_one_qubit(
                psi, operation.qubits[0], _rotation_entries(operation.rotation, angles)
            )
        elif operation.kind == "feature":
            assert feature_angles is not None
            angles = feature_angles[operation.index].reshape(1, 1, 1, -1)
            _apply_one_qubit(
                psi, operation.qubits[0], _rotation_entries(operation.rotation, angles)
            )
        elif operation.kind == "permutation":
            _apply_permutation(psi, operation)
        elif len(operation.qubits) == 2:
            _apply_two_qubit(psi, operation)
        else:
            _apply_one_qubit(psi, operation.qubits[0], _fixed_entries(operation))
    return psi


def encode(program: Program, features: np.ndarray) -> np.ndarray:
    """Encoded feature states ``(2**n, N)`` of a feature-map program, one column per sample."""
    n_samples = features.shape[0]
    psi = np.zeros((1, 2**program.n_qubits, n_samples), dtype=np.complex128)
    psi[0, 0, :] = 1.0
    run_program(program, psi, feature_angles=program.feature_angles(features))
    return psi[0]


# -- batched class probabilities ----------------------------------------------------------


@dataclass(frozen=True)
class Readout:
    """Sums basis-state probabilities per class without BLAS.

    Args:
        outcome_class: Class of each basis state (length ``2**n``).
        n_classes: Number of classes.
    """

    order: np.ndarray
    starts: np.ndarray

    @classmethod
    def of(cls, outcome_class: np.ndarray, n_classes: int) -> Readout:
        """Build the readout of a class map (every class must own a basis state)."""
        order = np.argsort(outcome_class, kind="stable")
        starts = np.searchsorted(outcome_class[order], np.arange(n_classes))
        return cls(order=order, starts=starts)

    def __call__(self, amplitudes: np.ndarray) -> np.ndarray:
        """Class probabilities ``(M, L, K)`` of complex states ``(M, 2**n, L)``."""
        probabilities = amplitudes.real**2 + amplitudes.imag**2
        summed = np.add.reduceat(probabilities[:, self.order, :], self.starts, axis=1)
        return np.ascontiguousarray(summed.transpose(0, 2, 1))


def parallel_map(function: Callable[[Any], None], items: Sequence[Any], threads: int) -> None:
    """Call ``function`` on every item, on up to ``threads`` worker threads."""
    if threads <= 1 or len(items) <= 1:
        for item in items:
            function(item)
        return
    with ThreadPoolExecutor(max_workers=min(threads, len(items))) as pool:
        for future in [pool.submit(function, item) for item in items]:
            future.result()
