"""Exact, batched density-matrix simulation of a transpiled circuit under an Aer noise model.

:class:`DensityMatrixProgram` lowers a measured circuit in a device's native gates (as
:func:`qmlops.noisy.transpile_for_device` returns it) and an Aer ``NoiseModel`` (the one the
device's ``AerSimulator`` uses) once into a program on the circuit's *active* qubits (those any
instruction touches; routing ancillas included, idle device qubits left out):

* every fixed gate becomes one superoperator, the gate followed by the noise model's error for
  that gate on those physical qubits (a local error if the model has one, else its all-qubit
  error, as Aer chooses), stored as a tensor acting on the row and column axes of its qubits;
* every parameterised ``rz`` becomes a phase on the density matrix's off-diagonal blocks, its
  angle a polynomial of the circuit's parameters (affine for the ansatz, products of features for
  the ZZ feature map; extracted once and checked), followed by its error if the model has one;
* one-qubit channels are merged into their qubit's next channel (see :func:`_fuse`);
* the final measurements become the exact outcome distribution of the measured clbits, pushed
  through each clbit's readout confusion matrix.

One call evolves the density matrices of every (weight point, sample) pair together, ``complex128``
arrays ``(batch, 2, ..., 2)`` with one row and one column axis per active qubit, so a training
step is a few dozen numpy contractions whatever its batch. Operations that precede the first
weight-dependent gate run once per sample and are shared by every weight point.
:func:`sample_outcomes` and :func:`pack_outcomes` then draw the shots and pack them as Qiskit's
sampler does.

The cost of a density matrix grows as ``4**n`` in the active qubits ``n``;
:data:`MAX_ENGINE_QUBITS` is where we stop using this engine. Anything the lowering does not know
(another parameterised gate, resets, delays, mid-circuit measurements, correlated readout errors,
noise passes other than Aer's relaxation on delays) raises :class:`UnsupportedCircuitError`, and
the caller samples on Aer instead.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from qmlops.concurrency import single_threaded_blas

__all__ = [
    "MAX_ENGINE_QUBITS",
    "DensityMatrixProgram",
    "UnsupportedCircuitError",
    "pack_outcomes",
    "sample_outcomes",
]

MAX_ENGINE_QUBITS = 7
"""Most active qubits the density-matrix engine takes. A density matrix holds ``4**n`` complex
numbers and every gate touches all of them, so each further qubit costs the engine 4x, while Aer's
sampler grows more slowly; with 1024 shots the two were about even at 7 active qubits on fake_perth
and the engine several times faster at 5 (our 2-core development machine)."""
BATCH_BYTES = 64 * 2**20
"""Density matrices evolved together at most (bytes), so memory stays bounded for large batches."""
AFFINE_TOLERANCE = 1e-9
"""Largest difference allowed between an angle and its extracted polynomial at a probe point."""
MAX_DEGREE = 4
"""Highest degree of an angle polynomial we extract (the ZZ feature map's is 2)."""
UNLOWERED = frozenset({"delay", "reset", "initialize", "store"})
"""Instructions refused even where Qiskit gives them a matrix (a delay's is the identity)."""


class UnsupportedCircuitError(Exception):
    """The circuit or noise model holds something the density-matrix engine does not lower."""


@dataclass(frozen=True)
class _Channel:
    """A fixed channel on ``qubits`` (local indices): tensor ``[r', c', r, c]``, bits MSB first."""

    qubits: tuple[int, ...]
    tensor: np.ndarray


@dataclass(frozen=True)
class _Phase:
    """``rz`` on local ``qubit``; its angle a polynomial of the parameter values."""

    qubit: int
    terms: dict[tuple[int, ...], float]
    depends_on_point: bool


def _fuse(operations: Sequence[_Channel | _Phase]) -> list[_Channel | _Phase]:
    """Fewer, equivalent operations: one-qubit channels merged into their qubit's next channel.

    A one-qubit channel waits (it commutes with everything on other qubits) until the next
    operation on its qubit: another one-qubit channel composes with it, a two-qubit channel
    absorbs it, a phase makes it run first.
    """
    fused: list[_Channel | _Phase] = []
    pending: dict[int, np.ndarray] = {}  # qubit -> matrix (r, c) -> (r', c')

    def flush(qubit: int) -> None:
        if qubit in pending:
            fused.append(_Channel((qubit,), pending.pop(qubit).reshape((2,) * 4)))

    for operation in operations:
        if isinstance(operation, _Phase):
            flush(operation.qubit)
            fused.append(operation)
            continue
        if len(operation.qubits) == 1:
            (qubit,) = operation.qubits
            matrix = operation.tensor.reshape(4, 4)
            pending[qubit] = matrix @ pending[qubit] if qubit in pending else matrix
            continue
        tensor = operation.tensor
        if len(operation.qubits) == 2:
            low, high = operation.qubits  # the tensor's bits: high first
            if high in pending:
                earlier = pending.pop(high).reshape((2,) * 4)
                tensor = np.einsum("ABCDefgh,egik->ABCDifkh", tensor, earlier)
            if low in pending:
                earlier = pending.pop(low).reshape((2,) * 4)
                tensor = np.einsum("ABCDefgh,fhjl->ABCDejgl", tensor, earlier)
        else:
            for qubit in operation.qubits:
                flush(qubit)
        fused.append(_Channel(operation.qubits, np.ascontiguousarray(tensor)))
    for qubit in sorted(pending):
        flush(qubit)
    return fused


def _channel_tensor(superop: np.ndarray, n_qubits: int) -> np.ndarray:
    """Qiskit's column-stacked ``SuperOp`` data as a tensor ``[r', c', r, c]`` of qubit bits.

    Qiskit vectorises ``ρ`` by columns, so the superoperator's index is ``column * d + row``;
    within ``row`` and ``column`` the first qubit of the instruction is the least significant bit.
    """
    dim = 2**n_qubits
    tensor = superop.reshape(dim, dim, dim, dim).transpose(1, 0, 3, 2)
    return np.ascontiguousarray(tensor.reshape((2,) * (4 * n_qubits)))


def _embed(matrix: np.ndarray, positions: Sequence[int], n_qubits: int) -> np.ndarray:
    """An operator on ``positions`` of ``n_qubits`` qubits as a full matrix (qubit 0 LSB)."""
    m = len(positions)
    operator = np.asarray(matrix, dtype=np.complex128).reshape((2,) * (2 * m))
    identity = np.eye(2**n_qubits, dtype=np.complex128).reshape((2,) * (2 * n_qubits))
    out_axes = [n_qubits - 1 - q for q in reversed(positions)]
    full = np.tensordot(operator, identity, axes=(list(range(m, 2 * m)), out_axes))
    return np.moveaxis(full, list(range(m)), out_axes).reshape(2**n_qubits, 2**n_qubits)


def _kraus_superop(operators: Sequence[np.ndarray]) -> np.ndarray:
    """Column-stacked superoperator ``Σ conj(K) ⊗ K`` of Kraus operators (as Qiskit's SuperOp)."""
    return sum((np.kron(k.conj(), k) for k in operators), start=np.zeros((1, 1)))


RESET_KRAUS = (np.array([[1.0, 0.0], [0.0, 0.0]]), np.array([[0.0, 1.0], [0.0, 0.0]]))


def _instruction_kraus(operation: Any) -> list[np.ndarray] | None:
    """Kraus operators of one error-circuit instruction, ``None`` where we leave it to Qiskit."""
    if operation.name == "reset":
        return list(RESET_KRAUS)
    if operation.name == "kraus":
        return [np.asarray(k, dtype=np.complex128) for k in operation.params]
    if hasattr(operation, "to_matrix"):
        return [np.asarray(operation.to_matrix(), dtype=np.complex128)]
    return None


def _parameter_key(value: Any) -> Any:
    return np.asarray(value).tobytes() if isinstance(value, np.ndarray) else repr(value)


def _error_superop(error: Any) -> np.ndarray:
    """Column-stacked superoperator of an Aer ``QuantumError``, equal to its ``to_quantumchannel``.

    ``QuantumError.to_quantumchannel`` composes Qiskit ``SuperOp`` objects instruction by
    instruction, a large share of a fake backend's two-qubit error's setup time; the same sum
    over the error's circuits in numpy, each distinct instruction converted once, is cheaper.
    """
    from qiskit.quantum_info import SuperOp

    n = error.num_qubits
    total = np.zeros((4**n, 4**n), dtype=np.complex128)
    converted: dict[Any, np.ndarray | None] = {}
    for circuit, probability in zip(error.circuits, error.probabilities, strict=True):
        superop = np.eye(4**n, dtype=np.complex128)
        for item in circuit.data:
            positions = tuple(circuit.find_bit(q).index for q in item.qubits)
            operation = item.operation
            key = (operation.name, positions, tuple(map(_parameter_key, operation.params)))
            if key not in converted:
                kraus = _instruction_kraus(operation)
                converted[key] = (
                    None
                    if kraus is None
                    else _kraus_superop([_embed(k, positions, n) for k in kraus])
                )
            step = converted[key]
            if step is None:
                superop = SuperOp(circuit).data
                break
            superop = step @ superop
        total += probability * superop
    return total


def _gate_tensor(operation: Any, error: Any) -> np.ndarray:
    """The channel of a fixed gate followed by its error (``None``: no error)."""
    from qiskit.quantum_info import Operator

    try:
        unitary = Operator(operation).data
    except Exception as failure:  # qiskit raises bare errors for non-unitary operations
        raise UnsupportedCircuitError(f"{operation.name} is not lowered") from failure
    superop = _kraus_superop([unitary])
    if error is not None:
        if error.num_qubits != operation.num_qubits:
            raise UnsupportedCircuitError(f"the error of {operation.name} acts on other qubits")
        superop = _error_superop(error) @ superop
    return _channel_tensor(superop, operation.num_qubits)


def _number(value: Any) -> float:
    """A real number from a float, complex or parameter-free ``ParameterExpression``."""
    return float(complex(value).real)


def _polynomial(angle: Any, columns: dict[str, int]) -> dict[tuple[int, ...], float]:
    """An angle expression as a polynomial: monomial (columns, repeated) to coefficient.

    The expression's Taylor series at zero, from its derivatives; feature maps multiply
    features (the ZZ map's ``2 (π - x0)(π - x1)``), the ansatz gives affine weight angles.

    Raises:
        UnsupportedCircuitError: If the angle is no polynomial of degree up to
            :data:`MAX_DEGREE` in its parameters.
    """
    from qiskit.circuit import ParameterExpression

    terms: dict[tuple[int, ...], float] = {}

    def visit(expression: Any, monomial: tuple[int, ...]) -> None:
        multiplicity = np.prod([math.factorial(monomial.count(c)) for c in set(monomial)])
        if not isinstance(expression, ParameterExpression) or not expression.parameters:
            terms[monomial] = _number(expression) / multiplicity
            return
        if len(monomial) == MAX_DEGREE:
            raise UnsupportedCircuitError(f"angle {angle} is no polynomial of low degree")
        parameters = expression.parameters
        terms[monomial] = _number(expression.bind({p: 0.0 for p in parameters})) / multiplicity
        for parameter in parameters:
            column = columns[parameter.name]
            if not monomial or column >= monomial[-1]:
                visit(expression.gradient(parameter), (*monomial, column))

    visit(angle, ())
    terms = {m: c for m, c in terms.items() if c != 0.0}
    # Derivatives at zero miss nothing for a polynomial; check one random point anyway.
    parameters = list(angle.parameters)
    probe = np.random.default_rng(0).uniform(-3.0, 3.0, len(columns))
    bound = _number(angle.bind({p: probe[columns[p.name]] for p in parameters}))
    if abs(bound - _evaluate_polynomial(terms, probe[None])[0]) > AFFINE_TOLERANCE:
        raise UnsupportedCircuitError(f"angle {angle} is no polynomial of its parameters")
    return terms


def _evaluate_polynomial(terms: dict[tuple[int, ...], float], values: np.ndarray) -> np.ndarray:
    """A polynomial of parameter values ``(B, n_parameters)``, ``(B,)``."""
    out = np.zeros(values.shape[0])
    for monomial, coefficient in terms.items():
        out += coefficient * np.prod(values[:, list(monomial)], axis=1)
    return out


class _NoiseLookup:
    """The errors an Aer noise model attaches to an instruction on physical qubits."""

    def __init__(self, noise_model: Any) -> None:
        from qiskit.circuit import Delay

        if noise_model is None:
            self._local: dict[str, dict[tuple[int, ...], Any]] = {}
            self._default: dict[str, Any] = {}
            self._local_readout: dict[tuple[int, ...], Any] = {}
            self._default_readout: Any = None
            return
        # Aer offers no public getters for these tables; the Aer reference test guards them.
        for noise_pass in getattr(noise_model, "_custom_noise_passes", None) or ():
            # NoiseModel.from_backend adds thermal relaxation on delays only; we refuse delays.
            if getattr(noise_pass, "_ops", None) != (Delay,):
                raise UnsupportedCircuitError(f"noise pass {type(noise_pass).__name__} not lowered")
        if getattr(noise_model, "_nonlocal_quantum_errors", None):
            raise UnsupportedCircuitError("non-local quantum errors are not lowered")
        self._local = dict(noise_model._local_quantum_errors)
        self._default = dict(noise_model._default_quantum_errors)
        self._local_readout = dict(noise_model._local_readout_errors)
        self._default_readout = noise_model._default_readout_error
        if "measure" in self._local or "measure" in self._default:
            raise UnsupportedCircuitError("quantum errors on measurements are not lowered")

    def gate_error(self, name: str, qubits: tuple[int, ...]) -> Any:
        """The local error of ``name`` on ``qubits``, else its all-qubit error, else ``None``."""
        local = self._local.get(name, {})
        if qubits in local:
            return local[qubits]
        return self._default.get(name)

    def readout(self, qubit: int) -> np.ndarray:
        """Confusion matrix ``P[true, measured]`` of one physical qubit (identity if none)."""
        if any(len(qubits) != 1 for qubits in self._local_readout):
            raise UnsupportedCircuitError("correlated readout errors are not lowered")
        error = self._local_readout.get((qubit,), self._default_readout)
        if error is None:
            return np.eye(2)
        matrix = np.asarray(error.probabilities, dtype=np.float64)
        if matrix.shape != (2, 2):
            raise UnsupportedCircuitError("correlated readout errors are not lowered")
        return matrix


class DensityMatrixProgram:
    """A measured circuit and its noise, lowered to a batched density-matrix program.

    Args:
        circuit: Measured circuit in native gates; its parameters' values come in the order of
            ``circuit.parameters``.
        noise_model: The Aer ``NoiseModel`` the device's simulator uses (``None``: no noise).
        point_columns: Columns of the parameter values that depend on the weight point (the
            others depend on the sample only).

    Attributes:
        active_qubits: Physical qubits the program simulates, local qubit ``i`` is entry ``i``.
        n_clbits: Measured classical bits; outcome ``k`` has clbit ``c`` as bit ``c`` of ``k``.
        n_parameters: Parameter values each circuit takes (``circuit.parameters``' order).

    Raises:
        UnsupportedCircuitError: If the circuit or noise model holds something not lowered here,
            or the circuit has more than :data:`MAX_ENGINE_QUBITS` active qubits.
    """

    def __init__(self, circuit: Any, noise_model: Any, point_columns: Sequence[int] = ()) -> None:
        noise = _NoiseLookup(noise_model)
        physical = {
            circuit.find_bit(q).index
            for item in circuit.data
            if item.operation.name != "barrier"
            for q in item.qubits
        }
        self.active_qubits = tuple(sorted(physical))
        if len(self.active_qubits) > MAX_ENGINE_QUBITS:
            raise UnsupportedCircuitError(
                f"{len(self.active_qubits)} active qubits, more than {MAX_ENGINE_QUBITS}"
            )
        local = {p: i for i, p in enumerate(self.active_qubits)}
        columns = {p.name: i for i, p in enumerate(circuit.parameters)}
        self.n_parameters = len(columns)
        point_set = set(point_columns)
        self._operations: list[_Channel | _Phase] = []
        measured: dict[int, int] = {}  # clbit -> physical qubit
        # Converting a QuantumError to a channel is slow: once per gate, qubits and angles.
        tensors: dict[tuple[Any, ...], np.ndarray | None] = {}
        for item in circuit.data:
            operation = item.operation
            qubits = tuple(circuit.find_bit(q).index for q in item.qubits)
            if operation.name == "barrier":
                continue
            if operation.name == "measure":
                measured[circuit.find_bit(item.clbits[0]).index] = qubits[0]
                continue
            if operation.name in UNLOWERED:
                raise UnsupportedCircuitError(f"{operation.name} is not lowered")
            if set(qubits) & set(measured.values()):
                raise UnsupportedCircuitError("gates after a measurement are not lowered")
            if item.clbits or getattr(operation, "condition", None) is not None:
                raise UnsupportedCircuitError(f"{operation.name} uses classical bits")
            targets = tuple(local[q] for q in qubits)
            if operation.is_parameterized():
                if operation.name != "rz":
                    raise UnsupportedCircuitError(f"parameterised {operation.name} is not lowered")
                terms = _polynomial(operation.params[0], columns)
                depends = bool(point_set & {c for monomial in terms for c in monomial})
                self._operations.append(_Phase(targets[0], terms, depends))
                key: tuple[Any, ...] = ("error of", operation.name, qubits)
                if key not in tensors:
                    error = noise.gate_error(operation.name, qubits)
                    tensors[key] = (
                        None
                        if error is None
                        else _channel_tensor(_error_superop(error), len(qubits))
                    )
            else:
                key = (operation.name, qubits, tuple(float(p) for p in operation.params))
                if key not in tensors:
                    tensors[key] = _gate_tensor(operation, noise.gate_error(operation.name, qubits))
            tensor = tensors[key]
            if tensor is not None:
                self._operations.append(_Channel(targets, tensor))
        if not measured:
            raise UnsupportedCircuitError("the circuit measures nothing")
        self.n_clbits = max(measured) + 1
        if set(measured) != set(range(self.n_clbits)):
            raise UnsupportedCircuitError("every clbit must be measured once")
        self._measured_local = tuple(local[measured[c]] for c in range(self.n_clbits))
        self._operations = _fuse(self._operations)
        self._first_point_operation = next(
            (
                index
                for index, operation in enumerate(self._operations)
                if isinstance(operation, _Phase) and operation.depends_on_point
            ),
            len(self._operations),
        )
        self._readout = tuple(noise.readout(measured[c]) for c in range(self.n_clbits))

    @property
    def n_active(self) -> int:
        """Active qubits simulated."""
        return len(self.active_qubits)

    def probabilities(self, values: np.ndarray) -> np.ndarray:
        """Exact outcome probabilities after readout error, one distribution per circuit.

        Args:
            values: Parameter values ``(M, N, n_parameters)`` in the circuit's parameter order;
                the point columns may differ across ``M``, the others must not.

        Returns:
            Array ``(M, N, 2**n_clbits)``; outcome ``k`` has clbit ``c`` as bit ``c``.
        """
        n_points, n_samples = values.shape[:2]
        per_sample = 4**self.n_active * 16 * max(1, n_points)
        chunk = max(1, BATCH_BYTES // per_sample)
        # The contractions are small: threaded BLAS only spins (badly so on a busy machine).
        # The shared limit, so that trainings running at once restore it only when all are done.
        with single_threaded_blas():
            parts = [
                self._chunk_probabilities(values[:, start : start + chunk])
                for start in range(0, n_samples, chunk)
            ]
        return np.concatenate(parts, axis=1)

    def _chunk_probabilities(self, values: np.ndarray) -> np.ndarray:
        n_points, n_samples = values.shape[:2]
        n = self.n_active
        rho = np.zeros((1,) + (2,) * (2 * n), dtype=np.complex128)
        rho[(0,) * (2 * n + 1)] = 1.0
        split = self._first_point_operation
        # Before the first weight-dependent gate the states depend on the sample only.
        rho = np.repeat(rho, n_samples, axis=0)
        rho = self._run(rho, self._operations[:split], values[0])
        rho = np.repeat(rho[None], n_points, axis=0).reshape((-1,) + rho.shape[1:])
        rho = self._run(rho, self._operations[split:], values.reshape(-1, values.shape[-1]))
        return self._measure(rho).reshape(n_points, n_samples, -1)

    def _row_axis(self, qubit: int) -> int:
        return 1 + self.n_active - 1 - qubit

    def _run(
        self, rho: np.ndarray, operations: Sequence[_Channel | _Phase], values: np.ndarray
    ) -> np.ndarray:
        n = self.n_active
        for operation in operations:
            if isinstance(operation, _Phase):
                angles = _evaluate_polynomial(operation.terms, values)
                phase = np.exp(-1j * angles).reshape((-1,) + (1,) * (2 * n - 2))
                row = self._row_axis(operation.qubit)
                # rz multiplies ρ[0, 1] by exp(-iθ) and ρ[1, 0] by exp(iθ) on its qubit.
                upper: list[Any] = [slice(None)] * (2 * n + 1)
                upper[row], upper[row + n] = 0, 1
                lower: list[Any] = [slice(None)] * (2 * n + 1)
                lower[row], lower[row + n] = 1, 0
                rho[tuple(upper)] *= phase
                rho[tuple(lower)] *= phase.conj()
                continue
            m = len(operation.qubits)
            rows = [self._row_axis(q) for q in reversed(operation.qubits)]
            axes = rows + [r + n for r in rows]
            out = np.tensordot(operation.tensor, rho, axes=(list(range(2 * m, 4 * m)), axes))
            rho = np.ascontiguousarray(np.moveaxis(out, list(range(2 * m)), axes))
        return rho

    def _measure(self, rho: np.ndarray) -> np.ndarray:
        n, dim = self.n_active, 2**self.n_active
        diagonal = np.einsum("bii->bi", rho.reshape(-1, dim, dim)).real
        diagonal = diagonal.reshape((-1,) + (2,) * n)
        keep = [self._row_axis(q) for q in reversed(self._measured_local)]  # clbit MSB first
        dropped = tuple(a for a in range(1, n + 1) if a not in keep)
        marginal = diagonal.sum(axis=dropped) if dropped else diagonal
        remaining = sorted(keep)
        marginal = marginal.transpose([0] + [1 + remaining.index(a) for a in keep])
        # The readout confusion matrix of each clbit maps true bits to measured bits.
        for clbit, matrix in enumerate(self._readout):
            axis = 1 + self.n_clbits - 1 - clbit
            marginal = np.moveaxis(np.tensordot(marginal, matrix, axes=([axis], [0])), -1, axis)
        probabilities = np.clip(marginal.reshape(marginal.shape[0], -1), 0.0, None)
        return probabilities / probabilities.sum(axis=-1, keepdims=True)


def sample_outcomes(probabilities: np.ndarray, shots: int, seed: int) -> np.ndarray:
    """Draw ``shots`` outcomes of every distribution, ``(..., shots)`` in increasing order.

    The shots of a circuit are exchangeable, so they are returned sorted (counts, not a shot
    history); every consumer of the packed bits counts them.
    """
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(shots, probabilities)
    cells = counts.reshape(-1, counts.shape[-1])
    outcomes = np.repeat(np.tile(np.arange(cells.shape[1]), cells.shape[0]), cells.ravel())
    return outcomes.reshape(counts.shape[:-1] + (shots,))


def pack_outcomes(outcomes: np.ndarray, n_clbits: int) -> np.ndarray:
    """Outcomes as Qiskit's ``BitArray.array``: big-endian bytes, shape ``(..., n_bytes)``."""
    n_bytes = (n_clbits + 7) // 8
    shifts = 8 * np.arange(n_bytes - 1, -1, -1)
    return ((outcomes[..., None] >> shifts) & 0xFF).astype(np.uint8)
