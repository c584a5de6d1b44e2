"""Batched circuit evaluation: class probabilities for many samples and weight points at once.

The circuit is measured through its readout's observables (:mod:`qmlops.readout`): class
projectors, whose expectation values are the class probabilities, or every qubit's Pauli Z,
which a trainable softmax head turns into class probabilities.
:meth:`CircuitEvaluator.readout_values` gives the measured values of circuit weight points;
:meth:`CircuitEvaluator.class_probabilities` takes whole weight vectors (circuit, then head)
and applies the head.

Two engines compute the same numbers:

* ``aer``: qiskit-aer's V2 primitives. Exact mode (``shots=None``) uses ``EstimatorV2`` with the
  readout's diagonal observables; shot mode uses ``SamplerV2``. Every request of an optimizer
  step goes into ONE primitive call, with all samples and weight points as parameter-value
  arrays bound at run time.
* ``numpy``: an exact batched statevector engine (:mod:`qmlops.statevector`). The feature map
  and the ansatz are lowered once per circuit description. The encoded feature states
  ``|phi(x)>`` do not depend on the weights, so they are computed once per data set and reused;
  each step then applies only the fused ansatz (layers of one-qubit gates as dense matrices,
  entangling layers as one gather) to all (weight point, sample) pairs, in cache-sized blocks.
  For small circuits with more samples than amplitudes it builds the ansatz unitary of each
  weight point (by running the ansatz on the identity) and applies it to all encoded states in
  one matrix product. It matches Aer to 1e-9 and is chosen automatically for exact evaluation
  of circuits up to :data:`NUMPY_MAX_QUBITS` qubits. It also gives the exact gradient of a
  loss by the adjoint method (:meth:`CircuitEvaluator.loss_gradient`): one taped forward pass
  and one backward sweep over the fused ansatz, by blocks of samples.

  Data re-uploading (``CircuitSpec.reuploads > 1``): the first upload stays cached as above.
  Each later upload of the ``z`` and ``zz`` maps is, per repetition, a fixed Hadamard layer and
  a per-sample phase vector that the one-repetition encoding already holds
  (:class:`qmlops.statevector.Reupload`); a step applies blocks of [upload, fused ansatz], and
  the adjoint sweep goes back over the same blocks (the phases' adjoint is a multiplication by
  their conjugate). With ``feature_map_reps > 1`` the one-repetition encoding is cached too
  (one more state per sample). The numpy engine does not re-upload the ``pauli`` map (its
  X and Y terms are not diagonal): ``backend="auto"`` runs it on Aer, ``backend="numpy"``
  refuses it with :class:`~qmlops.statevector.UnsupportedCircuitError`.

Threads: ``simulator_threads=0`` (the default) resolves, when the evaluator is built, to the
cores this process may use capped by the current ``threadpoolctl`` limit
(:func:`qmlops.concurrency.resolve_threads`). The numpy engine splits large batches over that
many worker threads (holding BLAS at one thread meanwhile); small batches run on the calling
thread, where its matrix products follow threadpoolctl. Aer gets the count as
``max_parallel_threads``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal, NamedTuple, get_args

import numpy as np
from qiskit.circuit import ParameterVectorElement
from qiskit.quantum_info import SparsePauliOp

from qmlops.circuits import COMPLEX_BYTES, FEATURE_PREFIX, CircuitSpec
from qmlops.concurrency import resolve_threads, single_threaded_blas
from qmlops.errors import ConfigurationError, InputError, SimulationError
from qmlops.readout import ClassReadout
from qmlops.statevector import (
    FusedProgram,
    Program,
    Readout,
    Reupload,
    Tape,
    UnsupportedCircuitError,
    Workspace,
    compile_program,
    encode,
    fuse_program,
    group_cotangents,
    group_matrices,
    parallel_map,
    run_fused,
    weight_gradient,
)

__all__ = [
    "BACKENDS",
    "CircuitEvaluator",
    "EvaluationCounters",
    "UnsupportedCircuitError",
    "class_frequencies",
]

BackendName = Literal["auto", "numpy", "aer"]
BACKENDS: tuple[str, ...] = get_args(BackendName)

NUMPY_MAX_QUBITS = 18
"""Largest circuit the ``auto`` backend hands to the numpy engine.

Measured per optimizer step on 2 cores (``make bench``, RealAmplitudes reps 3, one weight
point): numpy took 0.59 ms against Aer's exact path 15 ms at 8 qubits (64 samples), 7.8
against 59 ms at 12 qubits (64 samples), 53 against 462 ms at 16 qubits (32 samples) and 67
against 508 ms at 18 qubits (8 samples). Larger circuits were not measured; Aer takes them
(the engine also caches every sample's feature state: 4 MiB per sample at 18 qubits)."""

_WORK_BYTES = 64 * 2**20
_ENCODING_CACHE_SIZE = 4
_GROUP_QUBITS = 4
"""Adjacent qubits whose one-qubit gates the numpy engine applies as one dense matrix."""
_BLOCK_AMPLITUDES = 2**19
"""Amplitudes per block of work: measured fastest at 12 and 16 qubits (in cache, yet large
enough matrix products)."""
_PARALLEL_MIN_AMPLITUDES = 2**20
"""Below this many amplitudes per call, worker threads cost more than they save (measured on
2 cores: at 6 qubits x 73 points x 48 samples a second thread made a call slower, at 8 qubits
x 65 x 48 it gained 15 %, at 10 qubits x 81 x 48 45-65 %)."""
_PARALLEL_MIN_TAPE_AMPLITUDES = 2**17
"""Below this many amplitudes per call the adjoint gradient runs on one thread: its passes are
many small products, and a second thread waiting for the interpreter lock between them cost
more than it saved (on 2 cores, 12 qubits x 48 samples gained by it, 8 x 200 lost)."""
_TAPE_AMPLITUDES = 2**20
"""Most amplitudes per block of samples of the adjoint gradient (its tape keeps every group's
input states of a block: up to 16 MiB each). Measured on one thread at 16 qubits (16 samples),
the gradient took 650 ms in blocks of 2**17 amplitudes, 394 ms of 2**19 and 315 ms of 2**21:
narrow blocks make narrow matrix products; at 12 qubits (48 samples) 2**17 and above were
alike."""
_UNITARY_MAX_QUBITS = 10
_DENSE_MAX_QUBITS = 5
"""Widest register whose gradient runs on dense moments (:class:`DenseAnsatz`)."""
_GEMM_SPEEDUP = 8

Request = tuple[np.ndarray, np.ndarray] | tuple[np.ndarray, np.ndarray, np.ndarray]
"""``(features, weights[, rows])``: features ``(N, n_qubits)``, weight points ``(M, n_weights)``
(for :meth:`CircuitEvaluator.readout_values`, the circuit's weights only) and optionally the
indices of the rows of ``features`` to evaluate (a mini-batch); the encoded states of the whole
``features`` array stay cached, so mini-batches reuse them."""

ProbabilityCotangent = Callable[[np.ndarray, np.ndarray], np.ndarray]
"""``(probabilities (L, K), positions (L,)) -> dL/dp (L, K)``: the loss's derivative with
respect to the class probabilities of some of the evaluated samples (``positions`` index the
evaluated rows). The loss must be a sum over samples, so blocks of samples can be handled
apart."""

ValueCotangent = Callable[[np.ndarray, np.ndarray], np.ndarray]
"""``(values (L, R), positions (L,)) -> dL/dv (L, R)``: as :data:`ProbabilityCotangent`, with
respect to the readout's measured values."""


class EnginePrograms(NamedTuple):
    """What the numpy engine runs for one circuit description.

    Attributes:
        encoding: The feature map (the first upload, encoded once per data set).
        ansatz: One fused ansatz block (``reuploads`` of them run, each with its own weights).
        reupload: The later uploads (``None`` without re-uploading).
        phases: The one-repetition feature map whose encoding gives :attr:`reupload`'s phases,
            when it differs from :attr:`encoding` (``feature_map_reps > 1``); else ``None``.
    """

    encoding: Program
    ansatz: FusedProgram
    reupload: Reupload | None = None
    phases: Program | None = None


class _GradientBuffers(NamedTuple):
    """The buffers of one block of samples of the adjoint gradient, kept between calls.

    Attributes:
        tapes: One tape per ansatz block.
        scratch: The block's input states and the cotangent at its output.
        workspace: The passes of its backward sweep.
    """

    tapes: list[Tape]
    scratch: Tape
    workspace: Workspace


class _AdjointSweep(NamedTuple):
    """What both paths of the adjoint sweep read, and where they write the readout values.

    Attributes:
        encoded: The encoded states of every row of the features ``(2**n, N)``.
        phases: Per row, the re-uploads' phases (``None``: one block).
        rows: The evaluated rows ``(L,)``.
        matrices: Per ansatz block, its group matrices at one weight point.
        readout: The readout whose values the loss sees.
        cotangent: ``dL/dv`` of those values.
        values: The readout values of the evaluated rows ``(L, R)``, filled by the sweep.
        real: Whether the ansatz is real (its states are then swept as float64 views).
    """

    encoded: np.ndarray
    phases: np.ndarray | None
    rows: np.ndarray
    matrices: list[list[np.ndarray]]
    readout: Readout
    cotangent: ValueCotangent
    values: np.ndarray
    real: bool

    def output_cotangent(
        self, amplitudes: np.ndarray, positions: np.ndarray, scratch: Tape
    ) -> np.ndarray:
        """Readout values of ``positions``; returns what the backward sweep carries at the output.

        With ``v_r = Σ_b O[r, b] |ψ_b|²``, ``dL/dψ_b* = (Σ_r dL/dv_r O[r, b]) ψ_b``.

        Args:
            amplitudes: The output states of the evaluated rows at ``positions`` ``(1, 2**n, L)``
                (C-contiguous); consumed.
            positions: Their positions among the evaluated rows.
            scratch: Buffers for the result and its intermediates.
        """
        _, dim, columns = amplitudes.shape
        carried = scratch.next((dim, columns), np.dtype(np.complex128))
        # A complex sweep carries conj(λ), a real one λ (its states are float64 views).
        if self.real:
            np.copyto(carried, amplitudes[0])
        else:
            np.conjugate(amplitudes[0], out=carried)
        values = self.readout(amplitudes)[0]  # (L, R); squares the amplitudes in place
        self.values[positions] = values
        per_state = scratch.next((columns, dim), np.dtype(np.float64))
        np.matmul(self.cotangent(values, positions), self.readout.observables, out=per_state)
        carried *= per_state.T
        return carried.view(np.float64) if self.real else carried


@functools.lru_cache(maxsize=64)
def _programs(spec: CircuitSpec) -> EnginePrograms:
    """The numpy engine's programs of a circuit, built once per description.

    Raises:
        UnsupportedCircuitError: If the engine cannot run the circuit (a re-uploaded ``pauli``
            feature map, or a gate it cannot lower).
    """
    feature_map, ansatz = spec.feature_map_circuit(), spec.ansatz_circuit()
    encoding = compile_program(feature_map, features=list(feature_map.parameters))
    fused = fuse_program(compile_program(ansatz, weights=list(ansatz.parameters)), _GROUP_QUBITS)
    if spec.reuploads == 1:
        return EnginePrograms(encoding, fused)
    if spec.feature_map not in ("z", "zz"):
        raise UnsupportedCircuitError(
            f"the numpy engine re-uploads the z and zz feature maps only (a Hadamard layer and "
            f"phases), not {spec.feature_map!r}; use backend 'aer' or 'auto'"
        )
    phases = None
    if spec.feature_map_reps > 1:
        one = dataclasses.replace(spec, feature_map_reps=1, reuploads=1).feature_map_circuit()
        phases = compile_program(one, features=list(one.parameters))
    reupload = Reupload.of(spec.n_qubits, spec.feature_map_reps, _GROUP_QUBITS)
    return EnginePrograms(encoding, fused, reupload, phases)


def cached_states_per_sample(spec: CircuitSpec) -> int:
    """Statevectors the numpy engine caches per sample (the encoding, and phases if apart)."""
    return 2 if spec.reuploads > 1 and spec.feature_map_reps > 1 else 1


def planned_backend(spec: CircuitSpec, shots: int | None, requested: str) -> str:
    """The engine a :class:`CircuitEvaluator` for these arguments runs (``"numpy"`` or ``"aer"``).

    Raises:
        UnsupportedCircuitError: If ``requested`` is ``"numpy"`` and the engine cannot lower
            the circuit.
    """
    return "aer" if _numpy_programs(spec, shots, requested) is None else "numpy"


def _numpy_programs(spec: CircuitSpec, shots: int | None, requested: str) -> EnginePrograms | None:
    """The numpy engine's programs if it runs this circuit, else ``None`` (Aer runs it)."""
    if requested == "aer":
        return None
    wants_numpy = requested == "numpy" or (shots is None and spec.n_qubits <= NUMPY_MAX_QUBITS)
    if not wants_numpy:
        return None
    try:
        return _programs(spec)
    except UnsupportedCircuitError:
        if requested == "numpy":
            raise
        return None


def _tape_blocks(n_samples: int, dim: int, threads: int) -> tuple[list[tuple[int, int]], int]:
    """The blocks of samples ``(start, stop)`` the adjoint gradient tapes, and its threads.

    Blocks hold at most :data:`_TAPE_AMPLITUDES` amplitudes (one sample at least), and their
    number is a multiple of the threads, in blocks of equal size (give or take a sample): at
    16 qubits, 48 samples made three blocks of 16 on two threads, two rounds of which the
    second kept one thread idle; four blocks of 12 keep both busy in both rounds.
    """
    threads = threads if n_samples * dim >= _PARALLEL_MIN_TAPE_AMPLITUDES else 1
    n_blocks = -(-n_samples * dim // _TAPE_AMPLITUDES)
    n_blocks = max(1, min(n_samples, -(-n_blocks // threads) * threads))
    bounds = [n_samples * k // n_blocks for k in range(n_blocks + 1)]
    return list(zip(bounds[:-1], bounds[1:], strict=True)), min(threads, n_blocks)


def adjoint_states_held(spec: CircuitSpec, n_samples: int, threads: int) -> int:
    """Statevectors the adjoint gradient holds at once, beyond the forward pass's (size guard).

    Each worker thread tapes a block of samples (:func:`_tape_blocks`), one state per sample
    for: the block's input, every pass of every ansatz block (the taped group inputs and the
    final states), the re-uploaded states, the cotangent at the output and the readout's
    factor of it (real: half a state, counted as one), and the backward sweep's two buffers.
    The evaluator keeps these buffers between calls, one set per thread, until
    :meth:`CircuitEvaluator.release_gradient_buffers`. Up to ``_DENSE_MAX_QUBITS`` qubits the
    gradient runs on dense moments instead (:class:`DenseAnsatz`).
    """
    ansatz = _programs(spec).ansatz
    dim = 2**spec.n_qubits
    if spec.n_qubits <= _DENSE_MAX_QUBITS:
        # Dense moments: per block, its moments (then the prefixes' conjugates), their
        # prefixes and the gradient's two products (``2**n`` statevectors each); per sample,
        # each block's input, the output and the cotangent.
        moments = ansatz.dense.rows.shape[0]
        return 4 * spec.reuploads * moments * dim + (spec.reuploads + 2) * n_samples
    blocks, threads = _tape_blocks(n_samples, dim, threads)
    block = max(stop - start for start, stop in blocks)
    uploads = (spec.reuploads - 1) * spec.feature_map_reps
    return threads * block * (spec.reuploads * ansatz.n_passes + uploads + 5)


def _all_finite(*arrays: np.ndarray) -> bool:
    """Whether every entry of ``arrays`` is finite.

    A NaN or infinity anywhere makes the sum non-finite; one sum per array is a fraction of
    ``isfinite(...).all()`` on the small arrays of a training step. (A sum of finite entries
    overflows only past 1e308, out of reach of probabilities and their gradients.)
    """
    return math.isfinite(sum(float(np.add.reduce(array, axis=None)) for array in arrays))


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
    seconds: float = 0.0
    """Wall time spent inside :meth:`CircuitEvaluator.class_probabilities`."""


class CircuitEvaluator:
    """Compute class probabilities of a :class:`CircuitSpec` for batches of inputs.

    Args:
        spec: The circuit description.
        shots: ``None`` for exact probabilities, else the number of measurement shots.
        backend: ``"auto"``, ``"numpy"`` or ``"aer"`` (see the module docstring).
        seed: Seed of the shot sampler; each call draws a fresh seed from it, so runs are
            reproducible without reusing the same shot noise at every step.
        simulator_threads: Threads the simulation may use; ``0`` (default) resolves, when the
            evaluator is built, to this process's cores capped by the current threadpoolctl
            limit (see the module docstring). The resolved count is :attr:`threads`.
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
        if isinstance(simulator_threads, bool) or int(simulator_threads) < 0:
            raise ConfigurationError(
                f"simulator_threads must be >= 0 (0: automatic), got {simulator_threads!r}"
            )
        self.spec = spec
        self.shots = None if shots is None else int(shots)
        self.simulator_threads = int(simulator_threads)
        self.threads = resolve_threads(self.simulator_threads)
        self.counters = EvaluationCounters()
        self._rng = np.random.default_rng(seed)
        self._circuit = spec.circuit()
        self._outcome_class = spec.class_of_outcome()
        self.class_readout: ClassReadout = spec.class_readout()
        self._n_circuit_weights = spec.n_circuit_weights
        self._n_weights = spec.n_weights
        self._encodings: OrderedDict[str, np.ndarray] = OrderedDict()
        # A copy of the last features seen and their fingerprint: a training passes the same
        # array at every step, and comparing it costs a fraction of hashing it again.
        self._last_features: tuple[np.ndarray, str] | None = None
        self._workspaces = threading.local()  # one numpy-engine Workspace per thread
        # The adjoint gradient's tapes and sweep buffers, kept between calls: its worker
        # threads end with each call, so thread-local buffers would be taken afresh every time.
        self._gradient_buffers: list[_GradientBuffers] = []
        self._gradient_buffers_lock = threading.Lock()
        self._readout: Readout | None = None
        self._programs: EnginePrograms | None = None
        self.backend = self._resolve_backend(backend)
        self.unitary_path = "auto"
        """``"auto"``, ``"dense"``, ``"always"`` or ``"never"``: when the numpy engine
        multiplies by the ansatz unitary instead of running the ansatz on every sample, and
        whether it builds that unitary from dense moments (``"dense"``; ``"auto"`` does on up
        to ``_DENSE_MAX_QUBITS`` qubits) or by running the ansatz on the identity (for tests)."""

    def __getstate__(self) -> dict[str, object]:
        # Worker-thread buffers are scratch space: not pickled, recreated on demand.
        state = self.__dict__.copy()
        for scratch in ("_workspaces", "_gradient_buffers", "_gradient_buffers_lock"):
            del state[scratch]
        return state

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__dict__.update(state)
        self._workspaces = threading.local()
        self._gradient_buffers = []
        self._gradient_buffers_lock = threading.Lock()

    def _resolve_backend(self, requested: str) -> str:
        self._programs = _numpy_programs(self.spec, self.shots, requested)
        return "aer" if self._programs is None else "numpy"

    @property
    def states_held(self) -> int:
        """Statevectors this evaluator keeps in memory per cached sample (for the size guard)."""
        return cached_states_per_sample(self.spec) if self.backend == "numpy" else 0

    def class_probabilities(self, requests: Sequence[Request]) -> list[np.ndarray]:
        """Evaluate all requests in one primitive call.

        Args:
            requests: ``(features (N, n_qubits), weights (M, n_weights))`` pairs; every weight
                point (the circuit's weights, then the readout head's) is evaluated on every
                sample of its request.

        Returns:
            One array ``(M, N, n_classes)`` per request; each row sums to one.

        Raises:
            InputError: If an array has the wrong shape or holds NaN or infinite values.
            SimulationError: If the simulator fails or returns non-finite numbers.
        """
        checked = [self._check_request(*request) for request in requests]
        values = self._evaluate([self._circuit_part(request) for request in checked])
        return [self._apply_head(v, w) for v, (_, w, _) in zip(values, checked, strict=True)]

    def readout_values(self, requests: Sequence[Request]) -> list[np.ndarray]:
        """The readout's measured values of circuit weight points, in one primitive call.

        These are expectation values, so their derivative with respect to a circuit weight
        follows the parameter-shift rule; :attr:`class_readout` maps them to probabilities.

        Args:
            requests: ``(features (N, n_qubits), circuit weights (M, n_circuit_weights))``
                pairs, optionally with rows.

        Returns:
            One array ``(M, N, R)`` per request (``R``: :attr:`ClassReadout.n_values`).

        Raises:
            InputError: If an array has the wrong shape or holds NaN or infinite values.
            SimulationError: If the simulator fails or returns non-finite numbers.
        """
        return self._evaluate(
            [self._check_request(*request, circuit_only=True) for request in requests]
        )

    def _evaluate(
        self, checked: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]]
    ) -> list[np.ndarray]:
        """Readout values of checked requests of circuit weight points: one primitive call."""
        started = time.perf_counter()
        if self.backend == "numpy":
            # Matrices this small gain nothing from BLAS threads, and on a busy machine their
            # hand-offs cost far more than the products.
            small = self.spec.n_qubits <= _DENSE_MAX_QUBITS
            dim = 2**self.spec.n_qubits
            # The largest product multiplies a unitary into one weight point's samples.
            largest = dim * dim * max([dim, *(rows.shape[0] for _, _, rows in checked)])
            with single_threaded_blas(largest) if small else contextlib.nullcontext():
                results = self._numpy_values(checked)
        elif self.shots is None:
            results = self._aer_exact_values(checked)
        else:
            results = self._aer_shot_values(checked)
        self.counters.seconds += time.perf_counter() - started
        self.counters.primitive_calls += 1
        size = sum(len(rows) * w.shape[0] for _, w, rows in checked)
        self.counters.circuit_evaluations += size
        self.counters.per_call_sizes.append(size)
        for result in results:
            if not np.all(np.isfinite(result)):
                raise SimulationError("the simulator returned non-finite probabilities")
        return results

    def _circuit_part(
        self, request: tuple[np.ndarray, np.ndarray, np.ndarray]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        features, weights, rows = request
        return features, weights[:, : self._n_circuit_weights], rows

    def _apply_head(self, values: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """Class probabilities ``(M, N, K)`` of values ``(M, N, R)`` and weight points."""
        return self.class_readout.probabilities(values, weights[:, self._n_circuit_weights :])

    def _check_request(
        self,
        features: np.ndarray,
        weights: np.ndarray,
        rows: np.ndarray | None = None,
        *,
        circuit_only: bool = False,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        features = np.asarray(features, dtype=np.float64)
        weights = np.asarray(weights, dtype=np.float64)
        width = self._n_circuit_weights if circuit_only else self._n_weights
        if features.ndim != 2 or features.shape[1] != self.spec.n_qubits:
            raise InputError(
                f"features must have shape (n_samples, {self.spec.n_qubits}), got {features.shape}"
            )
        if weights.ndim != 2 or weights.shape[1] != width:
            raise InputError(f"weights must have shape (n_points, {width}), got {weights.shape}")
        # The last features seen were checked already (a copy with NaN never equals itself).
        known = self._known_fingerprint(features) is not None
        if not (np.isfinite(weights).all() and (known or np.isfinite(features).all())):
            raise InputError("features and weights must be finite (no NaN or infinity)")
        rows = np.arange(features.shape[0]) if rows is None else np.asarray(rows, dtype=np.intp)
        return features, weights, rows

    # -- numpy engine -------------------------------------------------------------------

    def encode(self, features: np.ndarray) -> np.ndarray:
        """Return the encoded feature states ``(2**n_qubits, N)``, cached per data set."""
        assert self._programs is not None
        return self._cached_encoding(self._programs.encoding, features, "")

    def _phases(self, features: np.ndarray) -> np.ndarray:
        """The re-uploads' phases ``φ1(x)`` ``(2**n_qubits, N)`` (see :class:`Reupload`)."""
        assert self._programs is not None
        if self._programs.phases is None:
            return self.encode(features)
        return self._cached_encoding(self._programs.phases, features, "phases:")

    def _known_fingerprint(self, features: np.ndarray) -> str | None:
        """The fingerprint of ``features`` if they equal the last features fingerprinted."""
        last = self._last_features
        # NaN never equals itself, so features with NaN are never taken as known.
        if last is not None and last[0].shape == features.shape and (last[0] == features).all():
            return last[1]
        return None

    def _features_fingerprint(self, features: np.ndarray) -> str:
        known = self._known_fingerprint(features)
        if known is None:
            known = _fingerprint(features)
            self._last_features = (features.copy(), known)
        return known

    def _cached_encoding(self, program: Program, features: np.ndarray, kind: str) -> np.ndarray:
        key = kind + self._features_fingerprint(features)
        cached = self._encodings.get(key)
        if cached is not None:
            self._encodings.move_to_end(key)
            return cached
        states = encode(program, features, _BLOCK_AMPLITUDES)
        self._encodings[key] = states
        while len(self._encodings) > _ENCODING_CACHE_SIZE * cached_states_per_sample(self.spec):
            self._encodings.popitem(last=False)
        if not kind:
            self.counters.encoded_samples += features.shape[0]
        return states

    def _block_weights(self, weights: np.ndarray) -> list[np.ndarray]:
        """Each ansatz block's weights ``(M, n_circuit_weights / reuploads)`` (views)."""
        size = self._n_circuit_weights // self.spec.reuploads
        return [
            weights[:, block * size : (block + 1) * size] for block in range(self.spec.reuploads)
        ]

    def _block_matrices(self, weights: np.ndarray) -> list[list[np.ndarray]]:
        """Group matrices of every ansatz block at weight points ``(M, n_circuit_weights)``."""
        assert self._programs is not None
        return [group_matrices(self._programs.ansatz, w) for w in self._block_weights(weights)]

    def _forward(
        self,
        states: np.ndarray,
        matrices: Sequence[Sequence[np.ndarray]],
        phases: np.ndarray | None,
        workspace: Workspace | None = None,
        tapes: Sequence[Tape] | None = None,
    ) -> np.ndarray:
        """Run every block [upload, ansatz] on encoded states ``(1, 2**n, L)`` (complex).

        Args:
            states: First-upload states (owned by the call).
            matrices: Per ansatz block, its group matrices.
            phases: Per column, the re-uploads' phases ``(2**n, L)`` (``None``: one block).
            workspace: Buffers for the passes (without tapes).
            tapes: One tape per block, to record the forward pass for the adjoint sweep.

        Returns:
            The output states ``(M, 2**n, L)``, complex.
        """
        assert self._programs is not None
        ansatz, reupload = self._programs.ansatz, self._programs.reupload
        psi = states
        for block, block_matrices in enumerate(matrices):
            if block:
                assert reupload is not None
                assert phases is not None
                # Taped states must not be overwritten: uploads then write fresh arrays.
                psi = reupload.apply(psi, phases, workspace if tapes is None else None)
            result = run_fused(
                ansatz,
                psi.view(np.float64) if ansatz.is_real else psi,
                matrices=block_matrices,
                workspace=workspace if tapes is None else None,
                tape=None if tapes is None else tapes[block],
            )
            psi = result.view(np.complex128) if ansatz.is_real else result
        return psi

    def _numpy_values(
        self, requests: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]]
    ) -> list[np.ndarray]:
        assert self._programs is not None
        readout = self._get_readout()
        results = []
        for features, weights, rows in requests:
            encoded = self.encode(features)  # (D, N): rows selects the columns to evaluate
            phases = self._phases(features) if self.spec.reuploads > 1 else None
            out = np.empty((weights.shape[0], rows.shape[0], self.class_readout.n_values))
            if self._use_dense() or self._use_unitary(rows.shape[0], weights.shape[0]):
                columns = np.take(encoded, rows, axis=1)
                phase_columns = None if phases is None else np.take(phases, rows, axis=1)
                self._probabilities_by_unitary(columns, phase_columns, weights, readout, out)
            else:
                self._probabilities_by_states(encoded, phases, rows, weights, readout, out)
            results.append(out)
        return results

    def _use_unitary(self, n_samples: int, n_points: int) -> bool:
        if self.unitary_path != "auto":
            return self.unitary_path == "always"
        assert self._programs is not None
        dim, passes = 2**self.spec.n_qubits, self._programs.ansatz.n_passes
        # Building U costs the ansatz's passes over `dim` columns per weight point; multiplying
        # it into the states is one BLAS call, about _GEMM_SPEEDUP times cheaper per amplitude
        # than a pass. Running the ansatz directly costs its passes over `n_samples` columns.
        by_unitary = dim * (passes + n_samples / _GEMM_SPEEDUP)
        return self.spec.n_qubits <= _UNITARY_MAX_QUBITS and by_unitary < passes * n_samples

    def _probabilities_by_unitary(
        self,
        encoded: np.ndarray,
        phases: np.ndarray | None,
        weights: np.ndarray,
        readout: Readout,
        out: np.ndarray,
    ) -> None:
        """Build U of each ansatz block per weight point, then U @ states.

        U comes from the dense moments on a few qubits (:meth:`_use_dense`), else from running
        the block on the identity. Re-uploads between blocks are applied to the states, sample
        by sample.
        """
        assert self._programs is not None
        ansatz, reupload = self._programs.ansatz, self._programs.reupload
        (dim, n_samples), n_points = encoded.shape, weights.shape[0]
        dense = self._use_dense()
        real = ansatz.is_real and not dense  # the dense moments are complex matrices
        dtype = np.float64 if real else np.complex128
        # Per weight point: its unitary and states, or (dense) its moments, each D x D.
        per_point = dim * max(dim, n_samples, ansatz.dense.rows.shape[0] * dim if dense else 0)
        chunk = max(1, _WORK_BYTES // (COMPLEX_BYTES * per_point))
        for p0 in range(0, n_points, chunk):
            w = weights[p0 : p0 + chunk]
            amplitudes = encoded[None]
            for block, block_weights in enumerate(self._block_weights(w)):
                if block:
                    assert reupload is not None
                    assert phases is not None
                    amplitudes = reupload.apply(amplitudes, phases)
                if dense:
                    unitary = ansatz.dense.unitaries(block_weights)
                else:
                    # One identity shared by all points: the first product broadcasts it.
                    matrices = group_matrices(ansatz, block_weights)
                    unitary = run_fused(ansatz, np.eye(dim, dtype=dtype)[None], matrices=matrices)
                # A real U acts on the real and imaginary parts alike: multiply the float64 view.
                amplitudes = np.matmul(unitary, amplitudes.view(np.float64) if real else amplitudes)
                if real:
                    amplitudes = amplitudes.view(np.complex128)
            out[p0 : p0 + w.shape[0]] = readout(amplitudes)

    def _probabilities_by_states(
        self,
        encoded: np.ndarray,
        phases: np.ndarray | None,
        rows: np.ndarray,
        weights: np.ndarray,
        readout: Readout,
        out: np.ndarray,
    ) -> None:
        """Run the circuit on every (weight point, sample) pair, in blocks over worker threads."""
        assert self._programs is not None
        dim, n_samples, n_points = encoded.shape[0], rows.shape[0], weights.shape[0]
        total = n_points * n_samples * dim
        if total >= _PARALLEL_MIN_AMPLITUDES:
            threads, n_blocks = self.threads, -(-total // _BLOCK_AMPLITUDES)
        else:
            # Too small for worker threads, and too small for blocks to pay: each block repeats
            # the Python between the matrix products, which holds the interpreter lock. At 8
            # qubits (65 points x 48 samples, two blocks before) one block gave the same speed
            # alone, and two trainings on two threads ran 1.85-1.90x instead of 1.82x.
            threads, n_blocks = 1, 1
        if n_points >= threads:
            # Whole weight points per thread: each block keeps every sample, so its matrix
            # products stay as wide as in one block (splitting samples narrows them, and at
            # 12 qubits with one weight point that cost more than a second thread saved).
            n_blocks = max(n_blocks, threads)
        # Split the weight points first; split the samples only when there are too few points.
        points_chunk = -(-n_points // min(n_blocks, n_points))
        samples_chunk = -(-n_samples // min(n_samples, -(-n_blocks // n_points)))
        blocks = [
            (p0, s0)
            for p0 in range(0, n_points, points_chunk)
            for s0 in range(0, n_samples, samples_chunk)
        ]

        matrices = self._block_matrices(weights)

        def run_block(block: tuple[int, int]) -> None:
            p0, s0 = block
            points = slice(p0, p0 + points_chunk)
            columns = rows[s0 : s0 + samples_chunk]
            states = np.take(encoded, columns, axis=1)[None]  # (1, D, L)
            result = self._forward(
                states,
                [[m[points] if m.shape[0] > 1 else m for m in ms] for ms in matrices],
                None if phases is None else np.take(phases, columns, axis=1),
                workspace=self._workspace(),
            )
            out[points, s0 : s0 + states.shape[2]] = readout(result)

        if threads > 1 and len(blocks) > 1:
            with single_threaded_blas():
                parallel_map(run_block, blocks, threads)
        else:
            parallel_map(run_block, blocks, 1)

    # -- exact gradient (adjoint method) ---------------------------------------------

    @property
    def supports_adjoint(self) -> bool:
        """Whether :meth:`loss_gradient` is available (exact numpy engine)."""
        return self.backend == "numpy"

    def loss_gradient(
        self,
        features: np.ndarray,
        weights: np.ndarray,
        cotangent: ProbabilityCotangent,
        rows: np.ndarray | None = None,
        requests: Sequence[Request] = (),
    ) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
        """Class probabilities and the exact gradient of a loss, by the adjoint method.

        One forward pass keeps each group's input states (a block of samples at a time); one
        backward sweep over the fused ansatz then gives the cotangent of every group matrix,
        summed over the samples, and from those the gradient of every weight. It costs a few
        forward passes whatever the number of weights. The loss reaches the circuit through
        the readout's head (:meth:`ClassReadout.backward`), whose own weights get their
        gradient by the chain rule.

        Args:
            features: Features ``(N, n_qubits)``.
            weights: One weight point ``(n_weights,)``: the circuit's, then the head's.
            cotangent: ``dL/dp`` of the loss ``L`` (see :data:`ProbabilityCotangent`).
            rows: Indices of the rows of ``features`` to evaluate (default: all).
            requests: More requests to evaluate in the same call, as in
                :meth:`class_probabilities` (validation data, for instance).

        Returns:
            Probabilities ``(len(rows), n_classes)``, ``dL/dθ`` ``(n_weights,)`` and the
            probabilities of ``requests``.

        Raises:
            ConfigurationError: If the evaluator does not run the numpy engine.
            InputError: For malformed or non-finite inputs.
            SimulationError: If the result is not finite.
        """
        if not self.supports_adjoint:
            raise ConfigurationError(
                "the adjoint gradient needs the exact numpy engine; use parameter shift"
            )
        started = time.perf_counter()
        weights = np.asarray(weights, dtype=np.float64)
        features, _, rows = self._check_request(features, weights.reshape(1, -1), rows)
        checked = [self._check_request(*request) for request in requests]
        assert self._programs is not None
        ansatz = self._programs.ansatz
        encoded = self.encode(features)
        phases = self._phases(features) if self.spec.reuploads > 1 else None
        readout = self._get_readout()
        points = weights[None, : self._n_circuit_weights]
        head = weights[self._n_circuit_weights :]
        class_readout = self.class_readout

        whole_batch: list[tuple[np.ndarray, np.ndarray]] = []

        def value_cotangent(values: np.ndarray, positions: np.ndarray) -> np.ndarray:
            probabilities = class_readout.probabilities(values[None], head[None])[0]
            value_gradient, head_gradient = class_readout.backward(
                values, head, cotangent(probabilities, positions), probabilities
            )
            if positions.shape[0] == rows.shape[0]:
                whole_batch.append((probabilities, head_gradient))
            return value_gradient

        dense = self._use_dense()
        # Dense moments build their own matrices; the other two paths share the group matrices.
        matrices = [] if dense else self._block_matrices(points)
        values = np.empty((rows.shape[0], class_readout.n_values))
        # The sweep's matrix products are small (a group matrix against a block of states):
        # BLAS threads gain nothing there, and on a busy machine their hand-offs cost more
        # than the products. The engine's own worker threads split large batches instead.
        sweep = _AdjointSweep(
            encoded, phases, rows, matrices, readout, value_cotangent, values, ansatz.is_real
        )
        dim = 2**self.spec.n_qubits
        # Dense moments multiply 2**n x 2**n matrices, by each other and by the samples' states.
        largest = dim * dim * max(dim, rows.shape[0]) if dense else None
        with single_threaded_blas(largest):
            if dense:
                circuit_gradient = [self._gradient_by_dense_moments(sweep, points[0])]
            else:
                by_unitary = self._use_unitary(rows.shape[0], 1)
                cotangents = (
                    self._cotangents_by_unitary(sweep)
                    if by_unitary
                    else self._cotangents_by_states(sweep)
                )
                circuit_gradient = [
                    weight_gradient(ansatz, block_weights[0], found, block_matrices)
                    for block_weights, found, block_matrices in zip(
                        self._block_weights(points), cotangents, matrices, strict=True
                    )
                ]
        if whole_batch:
            (probabilities, head_gradient), *_ = whole_batch
        else:
            # The head's gradient needs every evaluated row at once (the sweep ran by blocks).
            probabilities = class_readout.probabilities(values[None], head[None])[0]
            head_gradient = class_readout.backward(
                values, head, cotangent(probabilities, np.arange(rows.shape[0])), probabilities
            )[1]
        gradient = np.concatenate([*circuit_gradient, head_gradient])
        others = (
            [
                self._apply_head(v, w)
                for v, (_, w, _) in zip(
                    self._numpy_values([self._circuit_part(r) for r in checked]),
                    checked,
                    strict=True,
                )
            ]
            if checked
            else []
        )
        self.counters.seconds += time.perf_counter() - started
        self.counters.primitive_calls += 1
        size = rows.shape[0] + sum(len(r) * w.shape[0] for _, w, r in checked)
        self.counters.circuit_evaluations += size
        self.counters.per_call_sizes.append(size)
        if not _all_finite(probabilities, gradient, *others):
            raise SimulationError("the simulator returned a non-finite gradient or probabilities")
        return probabilities, gradient, others

    def _get_readout(self) -> Readout:
        if self._readout is None:
            self._readout = Readout(observables=self.class_readout.observables())
        return self._readout

    def _workspace(self) -> Workspace:
        workspace = getattr(self._workspaces, "workspace", None)
        if workspace is None:
            workspace = self._workspaces.workspace = Workspace()
        return workspace

    @contextlib.contextmanager
    def _borrowed_gradient_buffers(self) -> Iterator[_GradientBuffers]:
        """Tapes and sweep buffers for one block of the adjoint gradient, returned after it.

        Buffers kept from earlier calls are reused (at most one set per worker thread): each
        call's worker threads are new, so thread-local buffers were taken afresh, page fault by
        page fault, at every step.
        """
        with self._gradient_buffers_lock:
            buffers = self._gradient_buffers.pop() if self._gradient_buffers else None
        if buffers is None:
            tapes = [Tape() for _ in range(self.spec.reuploads)]
            buffers = _GradientBuffers(tapes, Tape(), Workspace())
        try:
            yield buffers
        finally:
            with self._gradient_buffers_lock:
                self._gradient_buffers.append(buffers)

    def release_gradient_buffers(self) -> None:
        """Free the tapes and sweep buffers the adjoint gradient keeps between calls.

        A later :meth:`loss_gradient` takes them afresh (slower on its first call).
        """
        with self._gradient_buffers_lock:
            self._gradient_buffers.clear()

    def _sweep_blocks(
        self,
        matrices: Sequence[Sequence[np.ndarray]],
        tapes: Sequence[Tape],
        carried: np.ndarray,
        phases: np.ndarray | None,
        workspace: Workspace,
    ) -> list[list[np.ndarray | None]]:
        """The adjoint sweep back over every block [upload, ansatz], last block first.

        Args:
            matrices: Per block, its group matrices at one weight point.
            tapes: Per block, the tape of its forward run (or of its unitary's run).
            carried: What the sweep carries at the last block's output ``(1, 2**n, L)``.
            phases: Per column, the re-uploads' phases (``None``: one block).
            workspace: Buffers for the sweep's passes.

        Returns:
            Per block, :func:`group_cotangents`.
        """
        assert self._programs is not None
        ansatz, reupload = self._programs.ansatz, self._programs.reupload
        real = ansatz.is_real
        found: list[list[np.ndarray | None]] = [[] for _ in matrices]
        for block in reversed(range(len(matrices))):
            if block == 0:
                found[0] = group_cotangents(ansatz, matrices[0], tapes[0], carried, workspace)[0]
                break
            assert reupload is not None
            assert phases is not None
            found[block], carried = group_cotangents(
                ansatz, matrices[block], tapes[block], carried, workspace, to_input=True
            )
            # A complex sweep carries conj(λ), a real one λ (as float64 views).
            carried = reupload.backward(
                carried.view(np.complex128) if real else carried, phases, not real, workspace
            )
            carried = carried.view(np.float64) if real else carried
        return found

    def _use_dense(self) -> bool:
        if self.unitary_path != "auto":
            return self.unitary_path == "dense"
        return self.spec.n_qubits <= _DENSE_MAX_QUBITS

    def _gradient_by_dense_moments(self, sweep: _AdjointSweep, weights: np.ndarray) -> np.ndarray:
        """``dL/dθ`` of the circuit weights ``(n_circuit_weights,)`` by :class:`DenseAnsatz`.

        Every block's unitary comes from its dense moments; the states run through them and the
        uploads between them; ``dL/dU*`` of each block is ``Σ λ φ^H`` over the samples, with
        ``λ`` carried back through the later blocks.
        """
        assert self._programs is not None
        dense, reupload = self._programs.ansatz.dense, self._programs.reupload
        blocks = self.spec.reuploads
        run = dense.run(weights.reshape(blocks, -1))
        # The samples as rows (L, D): the readout is then one product, with no transpose.
        amplitudes = np.take(sweep.encoded, sweep.rows, axis=1).T
        phases = None if sweep.phases is None else np.take(sweep.phases, sweep.rows, axis=1).T
        inputs = []
        for block in range(blocks):
            if block:
                assert reupload is not None
                assert phases is not None
                for _ in range(reupload.reps):
                    amplitudes = phases * np.matmul(amplitudes, reupload.dense.T)
            inputs.append(amplitudes)
            amplitudes = np.matmul(amplitudes, run.unitaries[block].T)
        values = sweep.readout.of_rows(amplitudes)
        sweep.values[:] = values
        per_state = np.matmul(
            sweep.cotangent(values, np.arange(values.shape[0])), sweep.readout.observables
        )
        carried = per_state * amplitudes  # λ = dL/dψ*, as rows
        adjoints = np.empty_like(run.unitaries)
        for block in reversed(range(blocks)):
            np.matmul(inputs[block].T, carried.conj(), out=adjoints[block])  # Γ^H = Σ φ λ^H
            if block:
                assert reupload is not None
                assert phases is not None
                carried = np.matmul(carried, run.unitaries[block].conj())  # rows of U^H λ
                for _ in range(reupload.reps):
                    carried = np.matmul(np.conj(phases) * carried, reupload.dense.T)
        return dense.gradient(run, adjoints, weights.shape[0] // blocks).ravel()

    def _cotangents_by_unitary(self, sweep: _AdjointSweep) -> list[list[np.ndarray | None]]:
        """Tape each block on the identity (giving U), then propagate ``dL/dU`` back through it.

        Returns:
            Per ansatz block, :func:`group_cotangents`.
        """
        states = np.take(sweep.encoded, sweep.rows, axis=1)
        phases = None if sweep.phases is None else np.take(sweep.phases, sweep.rows, axis=1)
        with self._borrowed_gradient_buffers() as buffers:
            return self._sweep_unitaries(sweep, states, phases, buffers)

    def _sweep_unitaries(
        self,
        sweep: _AdjointSweep,
        states: np.ndarray,
        phases: np.ndarray | None,
        buffers: _GradientBuffers,
    ) -> list[list[np.ndarray | None]]:
        """:meth:`_cotangents_by_unitary` on the evaluated states ``(2**n, L)``."""
        assert self._programs is not None
        ansatz, reupload, matrices = self._programs.ansatz, self._programs.reupload, sweep.matrices
        dim, real = states.shape[0], sweep.real
        tapes, workspace = buffers.tapes, buffers.workspace
        identity = np.eye(dim, dtype=np.float64 if real else np.complex128)[None]
        unitaries, inputs = [], []
        amplitudes = states
        for block, block_matrices in enumerate(matrices):
            if block:
                assert reupload is not None
                assert phases is not None
                amplitudes = reupload.apply(amplitudes[None], phases)[0]
            unitary = run_fused(ansatz, identity, matrices=block_matrices, tape=tapes[block])[0]
            unitaries.append(unitary)
            inputs.append(amplitudes.view(np.float64) if real else amplitudes)
            amplitudes = np.matmul(unitary, inputs[-1])
            if real:
                amplitudes = amplitudes.view(np.complex128)
        buffers.scratch.clear()
        carried = sweep.output_cotangent(
            np.ascontiguousarray(amplitudes)[None], np.arange(states.shape[1]), buffers.scratch
        )
        found: list[list[np.ndarray | None]] = [[] for _ in matrices]
        for block in reversed(range(len(matrices))):
            # conj(dL/dU) = Σ_samples conj(λ) φ^T: column j is the cotangent of U's column j.
            at_unitary = np.matmul(carried, inputs[block].T)[None]
            if block:
                assert reupload is not None
                assert phases is not None
                # Back over U (conj(λ_in) = U^T conj(λ_out); λ for a real U), then the upload.
                carried = np.matmul(unitaries[block].T, carried)
                carried = reupload.backward(
                    (carried.view(np.complex128) if real else carried)[None], phases, not real
                )[0]
                carried = carried.view(np.float64) if real else carried
            found[block] = group_cotangents(
                ansatz, matrices[block], tapes[block], at_unitary, workspace
            )[0]
        return found

    def _cotangents_by_states(self, sweep: _AdjointSweep) -> list[list[np.ndarray | None]]:
        """Tape and sweep back blocks of samples (over worker threads); sum their cotangents.

        Returns:
            Per ansatz block, :func:`group_cotangents` summed over the samples.
        """
        encoded, phases, rows, matrices = sweep.encoded, sweep.phases, sweep.rows, sweep.matrices
        blocks, threads = _tape_blocks(rows.shape[0], encoded.shape[0], self.threads)
        per_block: dict[int, list[list[np.ndarray | None]]] = {}

        def run_block(block: tuple[int, int]) -> None:
            positions = np.arange(*block)
            columns = None if phases is None else np.take(phases, rows[positions], axis=1)
            with self._borrowed_gradient_buffers() as buffers:
                scratch = buffers.scratch
                scratch.clear()
                states = scratch.next((encoded.shape[0], positions.shape[0]), encoded.dtype)
                # mode="clip": the rows were checked, and numpy then writes `states` directly.
                np.take(encoded, rows[positions], axis=1, out=states, mode="clip")
                amplitudes = self._forward(states[None], matrices, columns, tapes=buffers.tapes)
                carried = sweep.output_cotangent(amplitudes, positions, scratch)
                per_block[block[0]] = self._sweep_blocks(
                    matrices, buffers.tapes, carried[None], columns, buffers.workspace
                )

        parallel_map(run_block, blocks, threads)
        if len(blocks) == 1:
            return per_block[0]
        return [
            [
                None if parts[0] is None else np.sum(parts, axis=0)
                for parts in zip(*(per_block[start][block] for start, _ in blocks), strict=True)
            ]
            for block in range(len(matrices))
        ]

    # -- Aer primitives -----------------------------------------------------------------

    def _parameter_values(self, features: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """Parameter values ``(M, N, n_params)`` in the circuit's parameter order.

        Every upload shares the feature parameters ``x[i]`` (column ``i`` of the features);
        the weight parameters ``θ[j]`` take weight ``j``.
        """
        n_points, n_samples = weights.shape[0], features.shape[0]
        values = np.empty((n_points, n_samples, self._circuit.num_parameters))
        for column, param in enumerate(self._circuit.parameters):
            assert isinstance(param, ParameterVectorElement)
            if param.vector.name == FEATURE_PREFIX:
                values[:, :, column] = features[None, :, param.index]
            else:
                values[:, :, column] = weights[:, None, param.index]
        return values

    def _backend_options(self) -> dict[str, object]:
        return {
            "method": "statevector",
            "max_parallel_threads": self.threads,
            "runtime_parameter_bind_enable": True,
        }

    def _aer_observables(self) -> list[SparsePauliOp]:
        """The readout's observables as Pauli sums, in value order."""
        n_qubits = self.spec.n_qubits
        if self.class_readout.has_head:
            # Every value is a product of Z's: the qubits where its diagonal flips sign.
            return [
                SparsePauliOp.from_sparse_list([("Z" * len(qubits), qubits, 1.0)], n_qubits)
                for qubits in z_product_qubits(self.class_readout.observables())
            ]
        return [
            _diagonal_to_pauli((self._outcome_class == k).astype(float), n_qubits)
            for k in range(self.spec.n_classes)
        ]

    def _aer_exact_values(
        self, requests: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]]
    ) -> list[np.ndarray]:
        from qiskit_aer.primitives import EstimatorV2

        projectors = self._aer_observables()
        observables = np.empty((len(projectors), 1, 1), dtype=object)
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
            values = np.moveaxis(np.asarray(pub_result.data.evs), 0, -1)
            if self.class_readout.has_head:
                results.append(np.clip(values, -1.0, 1.0))
                continue
            probs = np.clip(values, 0.0, 1.0)
            results.append(probs / probs.sum(axis=-1, keepdims=True))
        return results

    def _aer_shot_values(
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
        packed = [np.asarray(pub_result.data.meas.array) for pub_result in pub_results]
        if self.class_readout.has_head:
            return [observable_means(bits, self.class_readout.observables()) for bits in packed]
        return [
            class_frequencies(bits, self._outcome_class, self.spec.n_classes) for bits in packed
        ]


def _outcomes(packed: np.ndarray) -> np.ndarray:
    """Measured basis-state indices ``(M, N, shots)`` of packed big-endian measurement bytes."""
    outcomes = np.zeros(packed.shape[:-1], dtype=np.int64)
    for byte in range(packed.shape[-1]):
        outcomes = (outcomes << 8) | packed[..., byte].astype(np.int64)
    return outcomes


def observable_means(packed: np.ndarray, observables: np.ndarray) -> np.ndarray:
    """Diagonal observables' expectations estimated from a sampler's packed measurement bits.

    Args:
        packed: ``BitArray.array`` of shape ``(M, N, shots, n_bytes)``, big-endian bytes.
        observables: ``(R, 2**n_qubits)``: every observable's value on every basis state
            (:meth:`qmlops.readout.ClassReadout.observables`).

    Returns:
        Array ``(M, N, R)``: each observable's mean over the shots.
    """
    outcomes = _outcomes(packed)
    # One observable at a time: all at once would hold R copies of every shot.
    return np.stack([row[outcomes].mean(axis=-1) for row in observables], axis=-1)


def z_product_qubits(observables: np.ndarray) -> list[list[int]]:
    """The qubits of every ``±1`` observable that is a product of Pauli Z's.

    Args:
        observables: ``(R, 2**n_qubits)`` diagonals, each a product of ``Z_q`` over some qubits.

    Returns:
        For every row, the qubits ``q`` whose bit flips its sign (``Z_q`` is a factor).
    """
    n_qubits = int(observables.shape[1]).bit_length() - 1
    return [
        [q for q in range(n_qubits) if row[1 << q] == -row[0]] for row in np.asarray(observables)
    ]


def class_frequencies(packed: np.ndarray, outcome_class: np.ndarray, n_classes: int) -> np.ndarray:
    """Fraction of shots that voted for each class, from a sampler's packed measurement bits.

    Args:
        packed: ``BitArray.array`` of shape ``(M, N, shots, n_bytes)``, big-endian bytes.
        outcome_class: Class of each measured outcome (see :meth:`CircuitSpec.class_of_outcome`).
        n_classes: Number of classes.

    Returns:
        Array ``(M, N, n_classes)``; each row sums to one.
    """
    classes = outcome_class[_outcomes(packed)]  # (M, N, shots)
    n_cells = classes.shape[0] * classes.shape[1]
    flat = np.arange(n_cells).reshape(classes.shape[:2] + (1,)) * n_classes + classes
    counts = np.bincount(flat.ravel(), minlength=n_cells * n_classes)
    return counts.reshape(classes.shape[0], classes.shape[1], n_classes) / classes.shape[2]
