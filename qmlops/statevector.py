"""Exact batched statevector kernels of the numpy engine.

A circuit is lowered once (cached per circuit description) to a short program of operations on
a batch of statevectors held as one array ``(M, 2**n, L)``: ``M`` weight points, the basis states,
and ``L`` columns (samples). Qubit ``q`` is bit ``q`` of the basis-state index, as in Qiskit.

Two ways to run a program:

* :func:`run_program`, gate by gate, for feature maps (run once per data set): one-qubit gates
  mix the two halves of the state selected by the qubit's bit, diagonal gates only scale them,
  permutation gates move slices; a rotation's angle is a trainable weight (one value per weight
  point) or a feature expression (one value per sample).
* :func:`run_fused`, for the ansatz (run at every optimizer step): :func:`fuse_program` merges
  each run of one-qubit gates into one dense matrix per group of adjacent qubits (a Kronecker
  product, applied with one matrix product per group), each run of ``cx``/``swap``-like gates
  into one gather, and each run of ``cz``-like gates into one multiplication. A layer of an
  ansatz on 16 qubits then costs 4 matrix products and one gather instead of about 30 passes.

The exact gradient of a loss of the readout values (:class:`Readout`), by the adjoint method: a
taped :func:`run_fused` keeps each group's input states (:class:`Tape`); :func:`group_cotangents`
sweeps back once over the stages, turning ``dL/dψ*`` at the output into each group matrix's
cotangent ``Σ λ ψ^H``; :func:`weight_gradient` maps those through the Kronecker products and
the gate chains to ``dL/dθ`` of every weight. That costs about three forward passes whatever
the number of weights, against ``2P + 1`` for the parameter-shift rule. On a few qubits a step
is dominated by the number of numpy calls rather than their size; there :class:`DenseAnsatz`
takes the gradient on whole ``2**n x 2**n`` unitaries in a few dozen calls, whatever the batch.

When every operation of a program is real (``ry``, ``cx``...), it runs on the float64 view of
the complex array, halving the arithmetic. Matrix products use numpy's BLAS; when the engine
runs blocks on its own worker threads it holds BLAS at one thread
(:func:`qmlops.concurrency.single_threaded_blas`), so the two do not oversubscribe the cores.
"""

from __future__ import annotations

import functools
import itertools
import math
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

    def feature_angles(self, features: np.ndarray) -> np.ndarray:
        """Evaluate the feature expressions on every sample: ``(n_expressions, N)``."""
        polynomials = self._multilinear
        if polynomials is not None:
            angles = np.empty((len(self.expressions), features.shape[0]))
            for i, (columns, coefficients) in enumerate(polynomials):
                angles[i] = _monomials(features[:, columns]) @ coefficients
            return angles
        angles = np.empty((len(self.expressions), features.shape[0]))
        for column, row in enumerate(features.tolist()):
            binding = dict(zip(self.features, row, strict=True))
            for i, expression in enumerate(self.expressions):
                angles[i, column] = expression.bind_all(binding)
        return angles

    @functools.cached_property
    def _multilinear(self) -> list[tuple[np.ndarray, np.ndarray]] | None:
        """Every expression as ``Σ_S c_S Π_{i in S} x_i``, or ``None`` if one is not of that form.

        The feature maps' expressions (``2 x``, ``2 (π - x_i)(π - x_j)``...) are multilinear in
        their few features, so their values at the corners of the unit cube fix them; binding
        them sample by sample instead costs Qiskit a call per sample and expression. Each
        polynomial is checked against the expression at two random points.

        Returns:
            Per expression: its features' input columns ``(k,)`` and coefficients ``(2**k,)``
            over the monomials of :func:`_monomials`.
        """
        column_of = {feature: column for column, feature in enumerate(self.features)}
        rng = np.random.default_rng(0)
        polynomials = []
        for expression in self.expressions:
            params = sorted(expression.parameters, key=column_of.__getitem__)
            if len(params) > _MULTILINEAR_MAX_FEATURES:
                return None
            columns = np.array([column_of[param] for param in params], dtype=np.int64)
            corners = (np.arange(2 ** len(params))[:, None] >> np.arange(len(params))) & 1
            values = np.array(
                [float(expression.bind_all(dict(zip(params, c, strict=True)))) for c in corners]
            )
            # Möbius inversion over subsets: c_S = Σ_{T ⊆ S} (-1)^{|S - T|} f(1_T).
            coefficients = values.copy()
            for bit in range(len(params)):
                with_bit = (np.arange(coefficients.size) >> bit) & 1 == 1
                coefficients[with_bit] -= coefficients[~with_bit]
            for point in rng.uniform(-4.0, 4.0, (2, len(params))):
                exact = float(expression.bind_all(dict(zip(params, point, strict=True))))
                fitted = float(_monomials(point[None])[0] @ coefficients)
                if not math.isclose(exact, fitted, rel_tol=1e-12, abs_tol=1e-12):
                    return None
            polynomials.append((columns, coefficients))
        return polynomials


_MULTILINEAR_MAX_FEATURES = 6
"""Most features in one expression that :meth:`Program.feature_angles` evaluates as a
polynomial (``2**k`` coefficients); wider ones are bound sample by sample."""


def _monomials(values: np.ndarray) -> np.ndarray:
    """``Π_{i in S} x_i`` for every subset ``S`` (bit ``i`` of its index), ``(N, 2**k)``."""
    monomials = np.ones((values.shape[0], 1))
    for column in range(values.shape[1]):
        monomials = np.concatenate([monomials, monomials * values[:, column : column + 1]], 1)
    return monomials


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


def encode(program: Program, features: np.ndarray, block_amplitudes: int = 2**19) -> np.ndarray:
    """Encoded feature states ``(2**n, N)`` of a feature-map program, one column per sample.

    Samples are encoded a block at a time, so the gate kernels' temporaries stay small next to
    the result.
    """
    n_samples, dim = features.shape[0], 2**program.n_qubits
    angles = program.feature_angles(features)
    states = np.empty((dim, n_samples), dtype=np.complex128)
    chunk = max(1, block_amplitudes // dim)
    for start in range(0, n_samples, chunk):
        stop = min(start + chunk, n_samples)
        psi = np.zeros((1, dim, stop - start), dtype=np.complex128)
        psi[0, 0, :] = 1.0
        run_program(program, psi, feature_angles=angles[:, start:stop])
        states[:, start:stop] = psi[0]
    return states


# -- batched class probabilities ----------------------------------------------------------


@dataclass(frozen=True)
class Readout:
    """Expectation values of diagonal observables with one matrix product.

    The class readouts of :mod:`qmlops.readout` are all of this form: class projectors (the
    values are class probabilities) or every qubit's Pauli Z.

    Attributes:
        observables: ``(R, 2**n)``: the diagonal of every observable (for a class readout,
            1 where a basis state votes for the class).
    """

    observables: np.ndarray

    @classmethod
    def of(cls, outcome_class: np.ndarray, n_classes: int) -> Readout:
        """Build the readout of a class map (the class of every basis state)."""
        return cls(observables=np.eye(n_classes)[outcome_class].T.copy())

    def __call__(self, amplitudes: np.ndarray, consume: bool = True) -> np.ndarray:
        """Expectation values ``(M, L, R)`` of complex states ``(M, 2**n, L)``.

        With ``consume`` (the default) the amplitudes are squared in place (no temporaries of
        their size); without it they are left as they are.
        """
        n_points, _, n_samples = amplitudes.shape
        parts = np.ascontiguousarray(amplitudes).view(np.float64)  # (M, 2**n, 2L): re, im
        parts = np.square(parts, out=parts if consume else None)
        per_part = np.matmul(self.observables, parts)  # (M, R, 2L)
        values = per_part.reshape(n_points, -1, n_samples, 2).sum(axis=-1)
        return np.ascontiguousarray(values.transpose(0, 2, 1))

    def of_rows(self, amplitudes: np.ndarray) -> np.ndarray:
        """Expectation values ``(L, R)`` of complex states given as rows ``(L, 2**n)``.

        With the states as rows (C-contiguous), the squared (re, im) pairs meet the
        observables in one product: no sum over the pairs, no transpose.
        """
        return np.matmul(np.square(amplitudes.view(np.float64)), self._pair_observables)

    @functools.cached_property
    def _pair_observables(self) -> np.ndarray:
        """``(2 * 2**n, R)``: each basis state's observable entries, once for re and once for im."""
        return np.repeat(self.observables.T, 2, axis=0)


def parallel_map(function: Callable[[Any], None], items: Sequence[Any], threads: int) -> None:
    """Call ``function`` on every item, on up to ``threads`` worker threads."""
    if threads <= 1 or len(items) <= 1:
        for item in items:
            function(item)
        return
    with ThreadPoolExecutor(max_workers=min(threads, len(items))) as pool:
        for future in [pool.submit(function, item) for item in items]:
            future.result()


# -- fused programs -----------------------------------------------------------------------


@dataclass(frozen=True)
class LocalStage:
    """Consecutive one-qubit gates, applied as one dense matrix per group of adjacent qubits.

    Attributes:
        operations: ``(qubit, gates in circuit order)`` for every qubit the stage touches.
        groups: Contiguous qubit ranges ``(first, count)`` covering the touched qubits.
    """

    operations: tuple[tuple[int, tuple[Operation, ...]], ...]
    groups: tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class PermutationStage:
    """Consecutive permutation gates as one basis permutation: ``new[i] = old[source[i]]``."""

    source: np.ndarray

    @functools.cached_property
    def inverse(self) -> np.ndarray:
        """The inverse permutation: ``old[i] = new[inverse[i]]`` (made once)."""
        return np.argsort(self.source)


@dataclass(frozen=True)
class DiagonalStage:
    """Consecutive fixed diagonal gates as one diagonal over the whole basis."""

    diagonal: np.ndarray


Stage = LocalStage | PermutationStage | DiagonalStage


@dataclass(frozen=True)
class FusedProgram:
    """A weight-only program regrouped into stages that each take one pass over the states.

    A run of one-qubit gates becomes a :class:`LocalStage` (per weight point, the gates of each
    qubit multiply into one 2x2 matrix and the matrices of up to ``group_qubits`` adjacent qubits
    into one Kronecker product, applied with one matrix product); a run of ``cx``/``swap``-like
    gates becomes one gather and a run of ``cz``-like gates one multiplication. The stages
    apply the same unitary as the gates in order, because only adjacent gates in the circuit's
    order are merged.
    """

    n_qubits: int
    stages: tuple[Stage, ...]
    is_real: bool

    @functools.cached_property
    def group_plan(self) -> _GroupPlan:
        """How :func:`group_matrices` builds this program's group matrices (made once)."""
        return _GroupPlan.of(self)

    @functools.cached_property
    def dense(self) -> DenseAnsatz:
        """The program as dense moments, for the small-register gradient (made once)."""
        return DenseAnsatz.of(self)

    @property
    def n_passes(self) -> int:
        """Passes over the states per run (a cost estimate)."""
        return sum(len(s.groups) if isinstance(s, LocalStage) else 1 for s in self.stages)


def _local_states(n_qubits: int, qubits: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Every basis state's index and its local state on ``qubits`` (bit k = ``qubits[k]``)."""
    index = np.arange(2**n_qubits)
    local = np.zeros_like(index)
    for position, qubit in enumerate(qubits):
        local |= ((index >> qubit) & 1) << position
    return index, local


def _global_source(n_qubits: int, operation: Operation) -> np.ndarray:
    """The basis permutation of a one- or two-qubit permutation gate over all ``2**n`` states."""
    assert operation.matrix is not None
    index, local = _local_states(n_qubits, operation.qubits)
    source_local = operation.matrix[local]
    source = index.copy()
    for position, qubit in enumerate(operation.qubits):
        source &= ~(1 << qubit)
        source |= ((source_local >> position) & 1) << qubit
    return source


def _global_diagonal(n_qubits: int, operation: Operation) -> np.ndarray:
    """The diagonal of a one- or two-qubit diagonal gate over all ``2**n`` states."""
    assert operation.matrix is not None
    return operation.matrix[_local_states(n_qubits, operation.qubits)[1]]


def fuse_program(program: Program, group_qubits: int = 4) -> FusedProgram:
    """Regroup a weight-only program into :class:`FusedProgram` stages.

    Args:
        program: A program without feature rotations (an ansatz).
        group_qubits: Most adjacent qubits whose one-qubit gates share one dense matrix.

    Returns:
        The fused program.

    Raises:
        UnsupportedCircuitError: If the program has feature rotations.
    """
    n = program.n_qubits
    stages: list[Stage] = []
    pending: dict[int, list[Operation]] = {}

    def close_local() -> None:
        if not pending:
            return
        qubits = sorted(pending)
        groups: list[tuple[int, int]] = []
        for qubit in qubits:
            if groups and qubit < groups[-1][0] + group_qubits:
                first = groups[-1][0]
                groups[-1] = (first, qubit - first + 1)
            else:
                groups.append((qubit, 1))
        stages.append(LocalStage(tuple((q, tuple(pending[q])) for q in qubits), tuple(groups)))
        pending.clear()

    for operation in program.operations:
        if operation.kind == "feature":
            raise UnsupportedCircuitError("only weight-only programs can be fused")
        if len(operation.qubits) == 1:
            pending.setdefault(operation.qubits[0], []).append(operation)
            continue
        close_local()
        last = stages[-1] if stages else None
        if operation.kind == "permutation":
            source = _global_source(n, operation)
            if isinstance(last, PermutationStage):
                stages[-1] = PermutationStage(last.source[source])
            else:
                stages.append(PermutationStage(source))
        elif operation.kind == "diagonal":
            diagonal = _global_diagonal(n, operation)
            if isinstance(last, DiagonalStage):
                stages[-1] = DiagonalStage(last.diagonal * diagonal)
            else:
                stages.append(DiagonalStage(diagonal))
        else:
            # Lowering to NUMPY_BASIS leaves only cx/swap (permutations) and cz (diagonal).
            raise UnsupportedCircuitError(f"cannot fuse the two-qubit gate on {operation.qubits}")
    close_local()
    return FusedProgram(n_qubits=n, stages=tuple(stages), is_real=program.is_real)


def _fixed_gate_matrix(operation: Operation) -> np.ndarray:
    """The 2x2 matrix of a fixed one-qubit gate."""
    assert operation.matrix is not None
    if operation.kind == "diagonal":
        return np.diag(operation.matrix)
    if operation.kind == "permutation":
        return np.eye(2)[operation.matrix]
    return operation.matrix


def _rotation_parts(
    rotations: Sequence[Operation],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Every weight rotation as ``C + cos(a) A + sin(a) B`` with ``a = s θ``.

    ``rx``/``ry``/``rz`` are ``cos(θ/2) I - i sin(θ/2) P`` and ``p`` is
    ``|0><0| + (cos θ + i sin θ) |1><1|``: a few whole-array operations build them all.

    Returns:
        ``s`` ``(R,)`` and ``A``, ``B``, ``C`` ``(R, 2, 2)``.
    """
    count = len(rotations)
    scale = np.full(count, 0.5)
    cos_part = np.zeros((count, 2, 2), dtype=np.complex128)
    sin_part = np.zeros((count, 2, 2), dtype=np.complex128)
    constant = np.zeros((count, 2, 2), dtype=np.complex128)
    for k, operation in enumerate(rotations):
        if operation.rotation == "p":
            scale[k] = 1.0
            constant[k] = np.diag([1.0, 0.0])
            cos_part[k] = np.diag([0.0, 1.0])
            sin_part[k] = np.diag([0.0, 1j])
        else:
            cos_part[k] = np.eye(2)
            sin_part[k] = -1j * _GENERATORS[operation.rotation][1]
    return scale, cos_part, sin_part, constant


def _kronecker(factors: Sequence[np.ndarray]) -> np.ndarray:
    """Batched Kronecker product of ``(..., 2, 2)`` factors, the first one leftmost."""
    # Pairwise broadcasting products: twice as fast as one many-operand einsum at 4 factors.
    product = factors[0]
    for factor in factors[1:]:
        rows, columns = product.shape[-2:]
        product = (product[..., :, None, :, None] * factor[..., None, :, None, :]).reshape(
            *product.shape[:-2], 2 * rows, 2 * columns
        )
    return product


@dataclass(frozen=True)
class _AdjointPlan:
    """Index arrays of :meth:`_GroupPlan.gradient`, made once per program.

    Attributes:
        class_groups: Per group class, its groups' program-order numbers, in class order.
        partial_traces: Per group class of ``k`` qubits: ``(k, 2, 2, 2**(k-1))`` flat indices
            into a ``2**k x 2**k`` matrix of the entries whose sum is entry ``(a, b)`` of its
            partial trace over every qubit but slot ``t`` (highest qubit first).
        steps: Per chain step: the slots whose gate there is a rotation, and those rotations.
        first_rotation_step: The first chain step holding a rotation.
    """

    class_groups: tuple[tuple[int, ...], ...]
    partial_traces: tuple[np.ndarray, ...]
    steps: tuple[tuple[np.ndarray, np.ndarray], ...]
    first_rotation_step: int


@dataclass(frozen=True)
class _GroupPlan:
    """How to build every group matrix of a fused program with a few whole-array operations.

    Built group by group, the matrices of 8-qubit RealAmplitudes (3 repetitions) took 127 us
    per call, in small-array numpy calls that all hold the interpreter lock; this plan builds
    the same matrices, bit for bit, in 44 us. Every qubit of every group is a *slot* whose 2x2
    matrix is the product of a chain of rows of one table per weight point (the identity, the
    fixed gates, then the weight rotations), and groups of equal size are Kronecker-multiplied
    together.

    Attributes:
        rotations: The program's weight rotations, in table order.
        fixed: ``(F, 2, 2)`` matrices of its fixed one-qubit gates.
        chains: ``(S, C)`` table rows of each slot's gates in circuit order (identity-padded).
        classes: Per group size ``k``: ``(k, slots (G, k))``, highest qubit first.
        order: Per group in program order: ``(class number, position in the class)``.
    """

    rotations: tuple[Operation, ...]
    fixed: np.ndarray
    chains: np.ndarray
    classes: tuple[tuple[int, np.ndarray], ...]
    order: tuple[tuple[int, int], ...]

    @classmethod
    def of(cls, fused: FusedProgram) -> _GroupPlan:
        """Plan the group matrices of ``fused``."""
        rotations: list[Operation] = []
        fixed: list[np.ndarray] = []
        chains: list[list[Operation | None]] = []
        by_size: dict[int, list[list[int]]] = {}
        order: list[tuple[int, int]] = []
        for stage in fused.stages:
            if not isinstance(stage, LocalStage):
                continue
            gates = dict(stage.operations)
            for first, count in stage.groups:
                slots = []
                for qubit in reversed(range(first, first + count)):
                    slots.append(len(chains))
                    chains.append(list(gates.get(qubit, (None,))))
                members = by_size.setdefault(count, [])
                order.append((count, len(members)))
                members.append(slots)
        rows: list[list[int]] = []
        for chain in chains:
            slot_rows = []
            for operation in chain:
                if operation is None:
                    slot_rows.append(0)
                elif operation.kind == "weight":
                    rotations.append(operation)
                    slot_rows.append(-len(rotations))  # rotation rows follow the fixed gates
                else:
                    fixed.append(_fixed_gate_matrix(operation))
                    slot_rows.append(len(fixed))
            rows.append(slot_rows)
        table = np.zeros((len(rows), max((len(r) for r in rows), default=1)), dtype=np.int64)
        for slot, slot_rows in enumerate(rows):
            table[slot, : len(slot_rows)] = [
                row if row >= 0 else len(fixed) + (-row) for row in slot_rows
            ]
        sizes = sorted(by_size)
        return cls(
            rotations=tuple(rotations),
            fixed=np.array(fixed, dtype=np.complex128).reshape(-1, 2, 2),
            chains=table,
            classes=tuple((size, np.array(by_size[size], dtype=np.int64)) for size in sizes),
            order=tuple((sizes.index(size), position) for size, position in order),
        )

    def _table(self, weights: np.ndarray | None, real: bool) -> np.ndarray:
        """Rows ``(M, 1 + F + R, 2, 2)``: the identity, the fixed gates, the rotations."""
        dtype = np.float64 if real else np.complex128
        n_points = 1 if weights is None or not self.rotations else weights.shape[0]
        n_fixed = self.fixed.shape[0]
        table = np.zeros((n_points, 1 + n_fixed + len(self.rotations), 2, 2), dtype=dtype)
        table[:, 0] = np.eye(2)
        table[:, 1 : 1 + n_fixed] = self.fixed.real if real else self.fixed
        if self.rotations:
            assert weights is not None
            scale, cos_part, sin_part, constant = self._rotation_basis
            angles = weights[:, self._rotation_weights] * scale
            rotations = (
                np.cos(angles)[..., None, None] * cos_part
                + np.sin(angles)[..., None, None] * sin_part
                + constant
            )
            table[:, 1 + n_fixed :] = rotations.real if real else rotations
        return table

    @functools.cached_property
    def _rotation_basis(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """:func:`_rotation_parts` of the table's rotations."""
        return _rotation_parts(self.rotations)

    def matrices(self, weights: np.ndarray | None, real: bool) -> list[np.ndarray]:
        """The group matrices ``(M, 2**k, 2**k)`` at weight points ``(M, P)``, in order."""
        table = self._table(weights, real)
        slots = table[:, self.chains[:, 0]]
        for step in range(1, self.chains.shape[1]):
            # Identity padding leaves shorter chains as they are; later gates multiply on the left.
            slots = np.matmul(table[:, self.chains[:, step]], slots)
        built = [
            _kronecker([slots[:, members[:, k]] for k in range(size)])
            for size, members in self.classes
        ]
        return [built[number][:, position] for number, position in self.order]

    def gradient(
        self,
        weights: np.ndarray,
        cotangents: Sequence[np.ndarray | None],
        n_weights: int,
        matrices: Sequence[np.ndarray] | None = None,
    ) -> np.ndarray:
        """The loss gradient with respect to the weights, from the group matrices' cotangents.

        Args:
            weights: One weight point ``(P,)``.
            cotangents: Per group in program order, ``conj(dL/dG)`` as :func:`group_cotangents`
                returns it (``None`` for a group without weights).
            n_weights: ``P``.
            matrices: The group matrices at ``weights`` (:meth:`matrices`), if already built.

        Returns:
            ``dL/dθ`` ``(P,)``.
        """
        if not self.rotations:
            return np.zeros(n_weights)
        plan = self._adjoint_plan
        table = self._table(weights[None, :], real=False)[0]
        # prefixes[j]: the product of each slot's first j gates (the identity for j = 0).
        prefixes = [np.broadcast_to(np.eye(2, dtype=np.complex128), (self.chains.shape[0], 2, 2))]
        for step in range(self.chains.shape[1]):
            prefixes.append(np.matmul(table[self.chains[:, step]], prefixes[-1]))
        slots = prefixes[-1]
        # dL/dS per slot: with D = dL/dG and G = S_t ⊗ (the others) O, the contraction of D
        # with conj(O) is D (I ⊗ O^H) = (D G^H)(S_t ⊗ I), so dL/dS_t = tr_others(D G^H) S_t.
        slot_cotangents = np.zeros_like(slots)
        for (size, members), groups, traces in zip(
            self.classes, plan.class_groups, plan.partial_traces, strict=True
        ):
            if size == 0 or all(cotangents[g] is None for g in groups):
                continue
            zero = np.zeros((2**size, 2**size))
            found = [cotangents[g] for g in groups]
            stacked = np.stack([zero if cotangent is None else cotangent for cotangent in found])
            group_matrices = (
                _kronecker([slots[members[:, k]] for k in range(size)])
                if matrices is None
                else np.stack([matrices[g][0] for g in groups])
            )
            # conj(conj(D)) G^H = conj(conj(D) G^T): the cotangents come conjugated.
            product = np.conj(np.matmul(stacked, group_matrices.swapaxes(-1, -2)))
            reduced = np.take(product.reshape(len(groups), -1), traces, axis=1).sum(axis=-1)
            slot_cotangents[members] = np.matmul(reduced, slots[members])
        # Back along each slot's chain S = R_C...R_1:
        # dL/dR_j = (R_C...R_j+1)^H dL/dS (R_j-1...R_1)^H.
        derivatives = self._derivatives(weights)
        per_rotation = np.zeros(len(self.rotations))
        after = slot_cotangents
        for step in reversed(range(self.chains.shape[1])):
            slot_index, rotation = plan.steps[step]
            if rotation.size:
                gate_cotangent = np.matmul(
                    after[slot_index], np.conj(prefixes[step][slot_index]).swapaxes(-1, -2)
                )
                products = np.conj(gate_cotangent) * derivatives[rotation]
                per_rotation[rotation] = 2.0 * products.real.sum(axis=(1, 2))
            if step > plan.first_rotation_step:
                after = np.matmul(np.conj(table[self.chains[:, step]]).swapaxes(-1, -2), after)
        return np.bincount(self._rotation_weights, per_rotation, minlength=n_weights)

    @functools.cached_property
    def _adjoint_plan(self) -> _AdjointPlan:
        n_fixed = self.fixed.shape[0]
        class_groups: list[list[int]] = [[] for _ in self.classes]
        for group, (number, _) in enumerate(self.order):
            class_groups[number].append(group)
        for groups in class_groups:
            groups.sort(key=lambda g: self.order[g][1])
        partial_traces = []
        for size, _ in self.classes:
            dim = 2**size
            index = np.arange(dim)
            traces = np.zeros((size, 2, 2, max(1, dim // 2)), dtype=np.intp)
            for t in range(size):
                bit = size - 1 - t  # slot t is the t-th highest qubit of the group
                rest = index[(index >> bit) & 1 == 0]
                for a in range(2):
                    for b in range(2):
                        traces[t, a, b] = (rest | (a << bit)) * dim + (rest | (b << bit))
            partial_traces.append(traces)
        steps = []
        for step in range(self.chains.shape[1]):
            slot_index = np.flatnonzero(self.chains[:, step] > n_fixed)
            steps.append((slot_index, self.chains[slot_index, step] - 1 - n_fixed))
        with_rotations = [step for step, (index, _) in enumerate(steps) if index.size]
        return _AdjointPlan(
            class_groups=tuple(tuple(groups) for groups in class_groups),
            partial_traces=tuple(partial_traces),
            steps=tuple(steps),
            first_rotation_step=min(with_rotations, default=0),
        )

    @functools.cached_property
    def weighted_groups(self) -> tuple[bool, ...]:
        """Per group in program order: whether any of its gates is a weight rotation."""
        n_fixed = self.fixed.shape[0]
        weighted_slots = np.any(self.chains > n_fixed, axis=1)
        return tuple(
            bool(np.any(weighted_slots[self.classes[number][1][position]]))
            for number, position in self.order
        )

    @functools.cached_property
    def _rotation_weights(self) -> np.ndarray:
        return np.array([operation.index for operation in self.rotations], dtype=np.int64)

    def _derivatives(self, weights: np.ndarray) -> np.ndarray:
        """``dR/dθ`` of every rotation of the table ``(R, 2, 2)`` at one weight point."""
        scale, cos_part, sin_part, _ = self._rotation_basis
        angles = weights[self._rotation_weights] * scale
        return np.asarray(
            scale[:, None, None]
            * (np.cos(angles)[:, None, None] * sin_part - np.sin(angles)[:, None, None] * cos_part)
        )


def group_matrices(fused: FusedProgram, weights: np.ndarray | None) -> list[np.ndarray]:
    """The dense matrix of every one-qubit group of a fused program, in order.

    Args:
        fused: The fused program.
        weights: Weight points ``(M, P)`` (``None`` if the program has no weights).

    Returns:
        One array ``(M, 2**k, 2**k)``, or ``(1, 2**k, 2**k)`` for a group without weights, per
        group of every :class:`LocalStage`.
    """
    return fused.group_plan.matrices(weights, fused.is_real)


class Workspace:
    """Two reusable buffers that a fused program's passes write into, in turn.

    Each pass of :func:`run_fused` produces a new array of the same size; taking it from the
    operating system every time (a fresh mapping, zeroed page by page on first touch) cost
    about as much as the arithmetic at 12 qubits. One workspace per thread keeps the buffers.
    """

    def __init__(self) -> None:
        self._buffers: list[np.ndarray] = [np.empty(0), np.empty(0)]
        self._turn = 0

    def next(self, shape: tuple[int, ...], dtype: np.dtype, avoid: np.ndarray) -> np.ndarray:
        """A C-contiguous array from the buffers (grown when too small).

        Args:
            shape: Its shape.
            dtype: Its dtype.
            avoid: An array it must not overlap (the input of the pass).

        Returns:
            The array; its contents are undefined.
        """
        size = math.prod(shape) * dtype.itemsize
        for _ in range(2):
            self._turn ^= 1
            buffer = self._buffers[self._turn]
            if buffer.nbytes < size:
                buffer = self._buffers[self._turn] = np.empty(size, dtype=np.uint8)
            candidate = buffer[:size].view(dtype).reshape(shape)
            if not np.may_share_memory(candidate, avoid):
                return candidate
        raise AssertionError("both workspace buffers overlap the input")  # pragma: no cover


class Tape:
    """The input states of every group of a taped :func:`run_fused`, for the backward sweep.

    Every pass of a taped run writes into its own buffer, kept between runs like a
    :class:`Workspace`'s (its owner keeps the tape for the next run): fresh arrays cost a page
    fault per page.

    Attributes:
        states: The group inputs of the last run, in program order.
    """

    def __init__(self) -> None:
        self.states: list[np.ndarray] = []
        self._buffers: list[np.ndarray] = []
        self._used = 0

    def clear(self) -> None:
        """Forget the recorded states (the buffers stay for the next run)."""
        self.states.clear()
        self._used = 0

    def next(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        """A C-contiguous array that no other pass of this run uses; contents undefined."""
        size = math.prod(shape) * dtype.itemsize
        if self._used == len(self._buffers):
            self._buffers.append(np.empty(0, dtype=np.uint8))
        buffer = self._buffers[self._used]
        if buffer.nbytes < size:
            buffer = self._buffers[self._used] = np.empty(size, dtype=np.uint8)
        self._used += 1
        return buffer[:size].view(dtype).reshape(shape)


def run_fused(
    fused: FusedProgram,
    psi: np.ndarray,
    weights: np.ndarray | None = None,
    matrices: Sequence[np.ndarray] | None = None,
    workspace: Workspace | None = None,
    tape: Tape | None = None,
) -> np.ndarray:
    """Apply a fused program to a batch of states.

    Args:
        fused: The fused program.
        psi: States ``(M, 2**n, L)``, or ``(1, 2**n, L)`` shared by all ``M`` weight points:
            complex, or the float64 view of complex states (``2L`` columns) when
            ``fused.is_real``. Owned by the call: it may be modified.
        weights: Weight points ``(M, P)``.
        matrices: :func:`group_matrices` of these weights, if already computed.
        workspace: Buffers to write the passes into (the result then lives in one of them
            and is overwritten by the next run that uses this workspace).
        tape: If given (then without a workspace), it is cleared, every pass writes into its
            buffers and every group's input states are recorded, for :func:`group_cotangents`.

    Returns:
        The new states ``(M, 2**n, L)``, same dtype as ``psi`` (not always the same array).
    """
    assert tape is None or workspace is None, "taped inputs must not be overwritten"
    if tape is not None:
        tape.clear()
    if matrices is None:
        matrices = group_matrices(fused, weights)
    _, dim, columns = psi.shape
    m_points = max([psi.shape[0], *(matrix.shape[0] for matrix in matrices)])

    def output(shape: tuple[int, ...]) -> np.ndarray | None:
        if tape is not None:
            return tape.next(shape, psi.dtype)
        return None if workspace is None else workspace.next(shape, psi.dtype, psi)

    groups = iter(matrices)
    for stage in fused.stages:
        if isinstance(stage, LocalStage):
            for first, count in stage.groups:
                group = next(groups)
                view = psi.reshape(-1, dim >> (first + count), 2**count, (1 << first) * columns)
                # Broadcasting: states shared by all points meet per-point matrices here.
                points = max(group.shape[0], view.shape[0])
                out = output((points, *view.shape[1:]))
                if tape is not None:
                    tape.states.append(view)
                psi = np.matmul(group[:, None], view, out=out).reshape(points, dim, columns)
        elif isinstance(stage, PermutationStage):
            # mode="clip": valid indices either way, and numpy then writes `out` directly.
            psi = np.take(psi, stage.source, axis=1, out=output(psi.shape), mode="clip")
        else:
            psi *= (stage.diagonal.real if fused.is_real else stage.diagonal)[None, :, None]
    if psi.shape[0] != m_points:
        psi = np.broadcast_to(psi, (m_points, dim, columns)).copy()
    return psi


_SUMMED_SLICE_ENTRIES = 2**16
"""Entries of the products :func:`_summed_products` computes at once before summing them."""


def _summed_products(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """``Σ_s left[s] @ right[s]^T`` over the leading axes of two stacks of matrices.

    In slices: the lowest group at 16 qubits is a stack of 4096 products of 16 x 16, which at
    once fill an array as large as the states, written and read back from memory.
    """
    left = left.reshape(-1, *left.shape[-2:])
    right = right.reshape(-1, *right.shape[-2:])
    step = max(1, _SUMMED_SLICE_ENTRIES // (left.shape[-2] * right.shape[-2]))
    total = np.zeros((left.shape[-2], right.shape[-2]), dtype=np.result_type(left, right))
    for start in range(0, left.shape[0], step):
        # Transposes: BLAS reads them as they lie.
        stop = start + step
        total += np.matmul(left[start:stop], right[start:stop].swapaxes(-1, -2)).sum(axis=0)
    return total


def group_cotangents(
    fused: FusedProgram,
    matrices: Sequence[np.ndarray],
    tape: Tape,
    cotangent: np.ndarray,
    workspace: Workspace | None = None,
    *,
    to_input: bool = False,
) -> tuple[list[np.ndarray | None], np.ndarray]:
    """The backward sweep of the adjoint method over a fused program run with a tape.

    With ``ψ_out = G ψ_in`` per group and ``λ = dL/dψ*`` (so ``dL = 2 Re <λ|dψ>``), a group's
    cotangent is ``dL/dG = Σ λ_out ψ_in^H`` over the states, and ``λ_in = G^H λ_out``. The sweep
    carries ``conj(λ)`` instead (``conj(λ_in) = G^T conj(λ_out)``), so that no conjugated copy of
    the taped states is needed; for a real program, whose states are float64 views, it carries
    ``λ`` itself, and the real part of ``dL/dG`` is all that counts.

    Args:
        fused: The fused program.
        matrices: Its :func:`group_matrices` at one weight point (``M = 1``).
        tape: The tape of that run (its states are consumed).
        cotangent: ``conj(dL/dψ*)`` at the program's output (``dL/dψ*`` for a real program,
            as a float64 view), shaped like the output states ``(1, 2**n, L)``. Overwritten.
        workspace: Buffers for the sweep's passes.
        to_input: Go on to the program's input, for a sweep that continues over what came
            before (a re-uploaded feature map and an earlier block); otherwise stop at the
            first weighted group, since what precedes it has no gradient.

    Returns:
        Per group in program order: ``conj(dL/dG)`` ``(2**k, 2**k)``, or ``None`` for a
        group without weights; and what the sweep carries where it stopped (``conj(dL/dψ*)``,
        or ``dL/dψ*`` for a real program): at the program's input when ``to_input``.
    """
    plan = fused.group_plan
    weighted = plan.weighted_groups
    results: list[np.ndarray | None] = [None] * len(matrices)
    _, dim, columns = cotangent.shape
    remaining = sum(weighted)
    group_number = len(matrices)
    carried = cotangent
    diagonal_dtype = carried.dtype

    def output(shape: tuple[int, ...], like: np.ndarray) -> np.ndarray | None:
        return None if workspace is None else workspace.next(shape, like.dtype, like)

    for stage in reversed(fused.stages):
        if remaining == 0 and not to_input:
            break  # what precedes the first weighted group has no gradient
        if isinstance(stage, LocalStage):
            for _ in stage.groups:
                group_number -= 1
                states = tape.states.pop()
                group = matrices[group_number]
                view = carried.reshape(states.shape)
                if weighted[group_number]:
                    remaining -= 1
                    # conj(dL/dG) = Σ conj(λ) ψ^T
                    results[group_number] = _summed_products(view, states)
                    if remaining == 0 and not to_input:
                        break
                out = output(view.shape, carried)
                carried = np.matmul(group.swapaxes(-1, -2)[:, None], view, out=out).reshape(
                    1, dim, columns
                )
        elif isinstance(stage, PermutationStage):
            carried = np.take(
                carried, stage.inverse, axis=1, out=output(carried.shape, carried), mode="clip"
            )
        else:
            diagonal = stage.diagonal.real if fused.is_real else stage.diagonal
            carried *= diagonal.astype(diagonal_dtype, copy=False)[None, :, None]
    tape.clear()
    return results, carried


def weight_gradient(
    fused: FusedProgram,
    weights: np.ndarray,
    cotangents: Sequence[np.ndarray | None],
    matrices: Sequence[np.ndarray] | None = None,
) -> np.ndarray:
    """``dL/dθ`` ``(P,)`` at one weight point ``(P,)`` from :func:`group_cotangents` (summed).

    ``matrices``: the :func:`group_matrices` of these weights, if the forward pass has them.
    """
    return fused.group_plan.gradient(weights, cotangents, weights.shape[0], matrices)


# -- small registers: the gradient on whole unitaries ------------------------------------

_GENERATORS: dict[str, tuple[complex, np.ndarray]] = {
    # dR/dθ = c G R(θ): -i/2 times the Pauli for rx, ry, rz; i times |1><1| for p.
    "rx": (-0.5j, np.array([[0, 1], [1, 0]], dtype=np.complex128)),
    "ry": (-0.5j, np.array([[0, -1j], [1j, 0]], dtype=np.complex128)),
    "rz": (-0.5j, np.array([[1, 0], [0, -1]], dtype=np.complex128)),
    "p": (1j, np.array([[0, 0], [0, 1]], dtype=np.complex128)),
}


_COS_SIN_SHIFT = np.array([0.0, np.pi / 2])
# Entries of the moments' monomial matrices beyond which the moments are built from their
# one-qubit factors instead (see DenseAnsatz._monomial_plan): 2**21 complex entries, 32 MiB.
_MONOMIAL_MAX_ENTRIES = 2**21


@dataclass(frozen=True)
class DenseRun:
    """What :meth:`DenseAnsatz.run` computed for a few weight points, kept for the gradient.

    Attributes:
        prefixes: ``F_j = S_j ... S_1`` ``(B, J, D, D)``, with ``S_j`` each moment's gates
            after the fixed stages before it.
        unitaries: The whole ansatz ``U`` of each point ``(B, D, D)``.
    """

    prefixes: np.ndarray
    unitaries: np.ndarray


@dataclass(frozen=True)
class DenseAnsatz:
    """A fused program as a chain of dense ``2**n x 2**n`` moments, for small registers.

    Every :class:`LocalStage` splits into *moments*: the first gate of every qubit, then the
    second, and so on (gates on different qubits commute, so any alignment is the same unitary);
    the fixed stages before a moment multiply into it. With ``F_j`` the product of the moments up
    to ``j``, ``W_j`` of those after it, and ``Γ = dL/dU*``, a rotation of moment ``j`` with
    ``dR/dθ = K R`` (``K`` acts on its qubit only, so it commutes with the rest of the moment)
    has ``dL/dθ = 2 Re Tr(K F_j Γ^H W_j)``, and ``W_j = U F_j^H``. Two products over all the
    moments then give the gradient of every weight, and each trace reads ``2**n`` entries (one
    per row of ``K``).

    The matrices are ``D x D`` with ``D = 2**n``, so this pays off only on a few qubits, where
    a step of the state-by-state sweep is dominated by the number of numpy calls, not their
    size: here a step is a few dozen whole-array calls whatever the batch and the number of
    weights.

    Attributes:
        n_qubits: Register width.
        rotations: The weight rotations, in table order.
        fixed: ``(F, 2, 2)`` fixed one-qubit gates.
        rows: ``(J, n)`` table rows (identity, fixed gates, rotations) of each moment's gate on
            each qubit, highest qubit first.
        before: ``(J, D, D)`` the fixed stages between moment ``j - 1`` and moment ``j``.
        after: ``(D, D)`` the fixed stages after the last moment (``None``: none).
        gather: ``(R, D)`` flat indices into ``(J, D, D)`` of the entries each rotation's trace
            reads.
        coefficients: ``(R, D)`` the entries of ``K`` that multiply them.
        weight_index: ``(R,)`` the weight of each rotation.
    """

    n_qubits: int
    rotations: tuple[Operation, ...]
    fixed: np.ndarray
    rows: np.ndarray
    before: np.ndarray
    after: np.ndarray | None
    gather: np.ndarray
    coefficients: np.ndarray
    weight_index: np.ndarray

    @classmethod
    def of(cls, fused: FusedProgram) -> DenseAnsatz:
        """Plan the dense moments of ``fused``."""
        n, dim = fused.n_qubits, 2**fused.n_qubits
        rotations: list[Operation] = []
        fixed: list[np.ndarray] = []
        moment_rows: list[list[int]] = []
        where: list[int] = []  # the moment of each rotation
        before: list[np.ndarray] = []
        pending = np.eye(dim, dtype=np.complex128)
        for stage in fused.stages:
            if isinstance(stage, PermutationStage):
                pending = np.eye(dim, dtype=np.complex128)[stage.source] @ pending
                continue
            if isinstance(stage, DiagonalStage):
                pending = stage.diagonal[:, None] * pending
                continue
            chains = dict(stage.operations)
            for depth in range(max(len(chain) for chain in chains.values())):
                rows = []
                for qubit in reversed(range(n)):
                    chain = chains.get(qubit, ())
                    operation = chain[depth] if depth < len(chain) else None
                    if operation is None:
                        rows.append(0)
                    elif operation.kind == "weight":
                        rotations.append(operation)
                        where.append(len(moment_rows))
                        rows.append(-len(rotations))
                    else:
                        fixed.append(_fixed_gate_matrix(operation))
                        rows.append(len(fixed))
                moment_rows.append(rows)
                before.append(pending)
                pending = np.eye(dim, dtype=np.complex128)
        n_fixed = len(fixed)
        table_rows = np.array(
            [[r if r >= 0 else n_fixed - r for r in rows] for rows in moment_rows], dtype=np.int64
        ).reshape(-1, n)
        index = np.arange(dim)
        gather = np.zeros((len(rotations), dim), dtype=np.int64)
        coefficients = np.zeros((len(rotations), dim), dtype=np.complex128)
        for k, (operation, moment) in enumerate(zip(rotations, where, strict=True)):
            (qubit,) = operation.qubits
            scale, generator = _GENERATORS[operation.rotation]
            bit = (index >> qubit) & 1
            # Row i of K has one entry, at column s(i): bit `qubit` of i mapped by the generator.
            target_bit = np.argmax(np.abs(generator), axis=1)[bit]
            source = (index & ~(1 << qubit)) | (target_bit << qubit)
            gather[k] = (moment * dim + source) * dim + index
            coefficients[k] = scale * generator[bit, target_bit]
        identity = np.eye(dim, dtype=np.complex128)
        return cls(
            n_qubits=n,
            rotations=tuple(rotations),
            fixed=np.array(fixed, dtype=np.complex128).reshape(-1, 2, 2),
            rows=table_rows,
            before=np.array(before, dtype=np.complex128).reshape(-1, dim, dim),
            after=None if np.array_equal(pending, identity) else pending,
            gather=gather,
            coefficients=coefficients,
            weight_index=np.array([op.index for op in rotations], dtype=np.int64),
        )

    @functools.cached_property
    def _factor_plan(self) -> tuple[np.ndarray, np.ndarray]:
        """Every moment's one-qubit factors as a linear map of ``(cos a, sin a)`` per rotation.

        With the rotations' parts (:func:`_rotation_parts`), the factors ``(J, n, 2, 2)`` are
        ``constant + Σ_k cos a_k A_k + sin a_k B_k``.

        Returns:
            The basis ``(2R, J*n*4)`` (rows ``A_0, B_0, A_1, ...``) and the constant part
            ``(J*n*4,)``.
        """
        n_fixed = self.fixed.shape[0]
        _, cos_part, sin_part, rotation_constant = _rotation_parts(self.rotations)
        slots = self.rows.reshape(-1)
        constant = np.zeros((slots.shape[0], 2, 2), dtype=np.complex128)
        basis = np.zeros((2 * len(self.rotations), slots.shape[0], 2, 2), dtype=np.complex128)
        for slot, row in enumerate(slots.tolist()):
            if row == 0:
                constant[slot] = np.eye(2)
            elif row <= n_fixed:
                constant[slot] = self.fixed[row - 1]
            else:
                k = row - 1 - n_fixed
                constant[slot] = rotation_constant[k]
                basis[2 * k, slot] = cos_part[k]
                basis[2 * k + 1, slot] = sin_part[k]
        return basis.reshape(basis.shape[0], -1), constant.reshape(-1)

    @functools.cached_property
    def _monomial_plan(self) -> tuple[np.ndarray, np.ndarray] | None:
        """Every moment as a linear map of products of its rotations' ``cos a`` and ``sin a``.

        A moment is the Kronecker product of one-qubit factors, each linear in ``(1, cos a,
        sin a)`` of its own rotation, times the fixed stages before it, so it is a sum over
        one term per qubit: ``S_j = Σ_c (Π_q u[c_q]) M_jc`` with ``u = (1, cos a_0, sin a_0,
        cos a_1, ...)``. Building the moments is then one product, instead of a Kronecker
        product of factors and a product by the fixed stages.

        Returns:
            The terms ``(J, C, n)`` (indices into ``u``; moments with fewer terms padded with
            zero matrices) and the matrices ``M`` ``(J, C, 2 * D * D)`` as float64 views; or
            ``None`` when those would take more than ``_MONOMIAL_MAX_ENTRIES`` entries.
        """
        n_fixed = self.fixed.shape[0]
        identity = np.eye(2, dtype=np.complex128)
        _, cos_part, sin_part, constant = _rotation_parts(self.rotations)
        per_moment: list[list[list[tuple[int, np.ndarray]]]] = []
        for rows in self.rows.tolist():
            slots: list[list[tuple[int, np.ndarray]]] = []
            for row in rows:
                if row == 0:
                    slots.append([(0, identity)])
                elif row <= n_fixed:
                    slots.append([(0, self.fixed[row - 1])])
                else:
                    k = row - 1 - n_fixed
                    parts = ((0, constant[k]), (1 + 2 * k, cos_part[k]), (2 + 2 * k, sin_part[k]))
                    slots.append([(index, part) for index, part in parts if part.any()])
            per_moment.append(slots)
        dim = 2**self.n_qubits
        width = max(math.prod(len(terms) for terms in slots) for slots in per_moment)
        if len(per_moment) * width * dim * dim > _MONOMIAL_MAX_ENTRIES:
            return None
        index = np.zeros((len(per_moment), width, self.n_qubits), dtype=np.intp)
        matrices = np.zeros((len(per_moment), width, dim * dim), dtype=np.complex128)
        for moment, slots in enumerate(per_moment):
            for term, combination in enumerate(itertools.product(*slots)):
                index[moment, term] = [i for i, _ in combination]
                matrix = _kronecker([factor for _, factor in combination])
                matrices[moment, term] = (matrix @ self.before[moment]).ravel()
        return index, matrices.view(np.float64)

    @functools.cached_property
    def _angle_plan(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per rotation twice (``cos a``, then ``sin a``): its weight, the angle scale, a shift.

        ``cos(s θ - π/2) = sin(s θ)``, so one ``cos`` call gives both, interleaved as the rows of
        the factor basis and the entries of the monomials' ``u`` are.
        """
        scale = _rotation_parts(self.rotations)[0]
        count = len(self.rotations)
        return (
            np.repeat(self.weight_index, 2),
            np.repeat(scale, 2),
            np.tile(_COS_SIN_SHIFT, count),
        )

    def _moments(self, weights: np.ndarray) -> np.ndarray:
        """The moments ``S_j`` ``(B, J, D, D)`` at weight points ``(B, P)``."""
        points = weights.shape[0]
        index, scale, shift = self._angle_plan
        dim = 2**self.n_qubits
        plan = self._monomial_plan
        if plan is not None:
            terms, matrices = plan
            values = np.empty((points, 1 + index.shape[0]))  # u = (1, cos a_0, sin a_0, ...)
            values[:, 0] = 1.0
            np.cos(np.take(weights, index, axis=1) * scale - shift, out=values[:, 1:])
            monomials = np.multiply.reduce(np.take(values, terms, axis=1), axis=-1)
            # A real product on the float64 view: casting the monomials to complex costs more.
            moments = np.matmul(monomials[:, :, None, :], matrices).view(np.complex128)
            return moments.reshape(points, -1, dim, dim)
        basis, constant = self._factor_plan
        trig = np.cos(np.take(weights, index, axis=1) * scale - shift)
        factors = (np.matmul(trig, basis) + constant).reshape(points, *self.rows.shape, 2, 2)
        return np.matmul(_kronecker([factors[:, :, q] for q in range(self.n_qubits)]), self.before)

    def unitaries(self, weights: np.ndarray) -> np.ndarray:
        """The whole ansatz ``U`` ``(B, D, D)`` at weight points ``(B, P)`` (no prefixes kept)."""
        moments = self._moments(weights)
        unitary = moments[:, 0]
        for j in range(1, moments.shape[1]):
            unitary = np.matmul(moments[:, j], unitary)
        return unitary if self.after is None else np.matmul(self.after, unitary)

    def run(self, weights: np.ndarray) -> DenseRun:
        """The moments, their prefix products and the unitaries at weight points ``(B, P)``."""
        moments = self._moments(weights)
        prefixes = np.empty_like(moments)
        prefixes[:, 0] = moments[:, 0]
        for j in range(1, moments.shape[1]):
            np.matmul(moments[:, j], prefixes[:, j - 1], out=prefixes[:, j])
        last = prefixes[:, -1]
        unitaries = last if self.after is None else np.matmul(self.after, last)
        return DenseRun(prefixes, unitaries)

    def gradient(self, run: DenseRun, adjoints: np.ndarray, n_weights: int) -> np.ndarray:
        """``dL/dθ`` ``(B, P)`` of each point, from ``Γ^H`` ``(B, D, D)`` of its unitary.

        ``Γ = dL/dU*``, with ``dL = 2 Re Tr(Γ^H dU)`` (so ``Γ^H = Σ φ λ^H`` over the samples
        for ``ψ = U φ``); the caller passes ``Γ^H``, which it can build without a conjugate.
        """
        # The moments are unitary, so the product of those after moment j is W_j = U F_j^H,
        # and C_j = F_j Γ^H W_j = F_j (Γ^H U) F_j^H: two products over all the moments at
        # once instead of a sweep back through them.
        core = np.matmul(adjoints, run.unitaries)
        products = np.matmul(
            np.matmul(run.prefixes, core[:, None]), run.prefixes.conj().swapaxes(-1, -2)
        )
        points = products.shape[0]
        gathered = np.take(products.reshape(points, -1), self.gather.ravel(), axis=1)  # (B, R*D)
        gradient = np.matmul(gathered.view(np.float64), self._trace_map)
        if gradient.shape[1] < n_weights:  # weights that no gate turns
            gradient = np.pad(gradient, ((0, 0), (0, n_weights - gradient.shape[1])))
        return np.asarray(gradient)

    @functools.cached_property
    def _trace_map(self) -> np.ndarray:
        """``(2 R D, W)``: the gathered entries (as float64 pairs) to ``dL/dθ`` of each weight.

        ``dL/dθ_w = Σ_k [k turns w] 2 Re Σ_d K_kd X_kd`` for the gathered entries ``X``; with
        ``X`` read as (re, im) pairs that is one real product.
        """
        width = int(self.weight_index.max(initial=-1)) + 1
        rotations, dim = self.coefficients.shape
        turns = np.zeros((rotations, width))
        turns[np.arange(rotations), self.weight_index] = 2.0
        parts = np.stack([self.coefficients.real, -self.coefficients.imag], axis=-1)
        return (parts[:, :, :, None] * turns[:, None, None, :]).reshape(2 * rotations * dim, width)


# -- re-uploaded feature maps -------------------------------------------------------------


@dataclass(frozen=True)
class Reupload:
    """A later upload of a ``z`` or ``zz`` feature map, applied per sample at every step.

    Each repetition of those maps is a Hadamard layer followed by gates diagonal in the
    computational basis, so one repetition is ``diag(d_x) H`` with a per-sample phase vector
    ``d_x``. The one-repetition encoding ``φ1(x) = diag(d_x) H|0> = d_x / sqrt(2**n)`` already
    holds it: one repetition maps ``ψ`` to ``φ1(x) * (sqrt(2**n) H ψ)``. The scaled Hadamard
    layer (entries ±1) runs as a fused, weight-free program; the phases are an elementwise
    product, and both are trivially inverted in the backward sweep.

    Attributes:
        hadamard: The Hadamard layer on every qubit, fused.
        matrices: Its group matrices, each scaled by ``sqrt(2**k)`` (so the layer applies
            ``sqrt(2**n) H``).
        reps: Repetitions of the feature map per upload.
    """

    hadamard: FusedProgram
    matrices: tuple[np.ndarray, ...]
    reps: int

    @classmethod
    def of(cls, n_qubits: int, reps: int, group_qubits: int = 4) -> Reupload:
        """The re-upload of a ``reps``-repetition ``z``/``zz`` feature map on ``n_qubits``."""
        layer = QuantumCircuit(n_qubits)
        layer.h(range(n_qubits))
        hadamard = fuse_program(compile_program(layer), group_qubits)
        matrices = tuple(
            matrix * math.sqrt(matrix.shape[-1]) for matrix in group_matrices(hadamard, None)
        )
        return cls(hadamard=hadamard, matrices=matrices, reps=reps)

    @functools.cached_property
    def dense(self) -> np.ndarray:
        """``sqrt(2**n) H`` on every qubit as one real ``2**n x 2**n`` matrix (entries ±1)."""
        n_qubits = self.hadamard.n_qubits
        return _kronecker([np.array([[1.0, 1.0], [1.0, -1.0]])] * n_qubits)

    def apply(
        self, psi: np.ndarray, phases: np.ndarray, workspace: Workspace | None = None
    ) -> np.ndarray:
        """Upload the features again: ``(diag(d_x) H)^reps`` on complex states ``(M, 2**n, L)``.

        Args:
            psi: The states (owned by the call: it may be modified).
            phases: ``φ1(x)`` of each column ``(2**n, L)``.
            workspace: Buffers for the passes (``None``: fresh arrays, which a tape needs).

        Returns:
            The new complex states (not always the same array).
        """
        for _ in range(self.reps):
            psi = run_fused(
                self.hadamard, psi.view(np.float64), matrices=self.matrices, workspace=workspace
            ).view(np.complex128)
            psi *= phases[None]
        return psi

    def backward(
        self,
        carried: np.ndarray,
        phases: np.ndarray,
        conjugated: bool,
        workspace: Workspace | None = None,
    ) -> np.ndarray:
        """Carry the adjoint sweep's cotangent back over :meth:`apply`.

        ``λ_in = U^H λ_out`` with ``U = (diag(d) H)^reps``: per repetition, multiply by
        ``conj(d)`` and apply ``H``. A sweep that carries ``conj(λ)`` multiplies by ``d``.

        Args:
            carried: Complex cotangent ``(1, 2**n, L)`` at the upload's output (modified).
            phases: ``φ1(x)`` of each column ``(2**n, L)``.
            conjugated: Whether ``carried`` is ``conj(λ)`` rather than ``λ``.
            workspace: Buffers for the passes.

        Returns:
            The complex cotangent at the upload's input.
        """
        factor = phases if conjugated else np.conj(phases)
        for _ in range(self.reps):
            carried *= factor[None]
            carried = run_fused(
                self.hadamard, carried.view(np.float64), matrices=self.matrices, workspace=workspace
            ).view(np.complex128)
        return carried
