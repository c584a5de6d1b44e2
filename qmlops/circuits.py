"""Parameterised circuits: feature maps, ansätze, the class readout and resource estimates.

Circuits are built with Qiskit 2's function-style circuit library. A :class:`CircuitSpec` is
the plain, JSON-serialisable description of a classifier's circuit; every circuit object is
rebuilt from it, so models are stored as a description plus weights, never as pickles.

Data re-uploading (``reuploads = R``, Pérez-Salinas et al. 2020, "Data re-uploading for a
universal quantum classifier"; Schuld, Sweke and Meyer 2021): the circuit is ``R`` blocks of
[feature map, ansatz], each ansatz block with its own weights, so the data enter ``R`` times and
the model's Fourier spectrum in each feature widens with ``R``. Block ``r`` holds the weights
``θ[r*P .. (r+1)*P - 1]`` where ``P`` is the weight count of one ansatz (``ansatz_reps``
repetitions); the circuit has ``R*P`` weights (the readout's head adds its own). ``R = 1`` is
the plain circuit (feature map, then ansatz). Deeper re-uploaded circuits usually want fewer
``ansatz_reps`` per block.

Readout (:mod:`qmlops.readout`): with ``"hamming_weight"`` (a description's default, so old
descriptions load as they were) a measured bitstring ``b`` votes for class
``popcount(b) mod n_classes``. For two classes this is the parity of all qubits (a global,
balanced observable); for ``K`` classes the Hamming weights ``0..n`` are dealt round-robin over
the classes, which needs ``K <= n_qubits + 1``. A class's score is the total probability of its
bitstrings, so the scores of one sample are non-negative and sum to one. The ``"z_softmax"``
readout (the classifier's default, with two uploads) instead feeds every qubit's Pauli-Z
expectation to a trainable softmax layer.
"""

from __future__ import annotations

import functools
import os
from dataclasses import asdict, dataclass
from typing import Any, Literal, get_args

import numpy as np
from qiskit import QuantumCircuit
from qiskit.circuit import ParameterVector
from qiskit.circuit.library import (
    efficient_su2,
    pauli_feature_map,
    real_amplitudes,
    z_feature_map,
    zz_feature_map,
)

from qmlops.config import MAX_REUPLOADS
from qmlops.errors import ConfigurationError, SizeLimitError
from qmlops.readout import DEFAULT_READOUT, READOUTS, ClassReadout, class_of_outcome

FeatureMapName = Literal["zz", "z", "pauli"]
AnsatzName = Literal["real_amplitudes", "efficient_su2"]
EntanglementName = Literal["reverse_linear", "linear", "full", "circular", "pairwise"]

FEATURE_MAPS: tuple[str, ...] = get_args(FeatureMapName)
ANSATZE: tuple[str, ...] = get_args(AnsatzName)
ENTANGLEMENTS: tuple[str, ...] = get_args(EntanglementName)

FEATURE_PREFIX = "x"
WEIGHT_PREFIX = "θ"
COMPLEX_BYTES = 16
MAX_QUBITS = 30


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigurationError(f"unknown {name} {value!r}; choose one of {', '.join(choices)}")


def check_integer(name: str, value: object, low: int, high: int) -> None:
    """Raise :class:`ConfigurationError` unless ``value`` is an integer in ``[low, high]``."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int | np.integer)
        or not (low <= value <= high)
    ):
        raise ConfigurationError(f"{name} must be an integer in [{low}, {high}], got {value!r}")


@dataclass(frozen=True)
class CircuitSpec:
    """Plain description of a classifier circuit (feature map followed by an ansatz, repeated).

    Attributes:
        n_qubits: Number of qubits; equals the number of input features.
        n_classes: Number of classes read out (see the module docstring for the mapping).
        feature_map: ``"zz"`` (second-order Pauli-Z evolution), ``"z"`` (first order, no
            entanglement) or ``"pauli"`` (Pauli evolution over ``paulis``).
        feature_map_reps: Repetitions of the feature map.
        ansatz: ``"real_amplitudes"`` (RY + CX) or ``"efficient_su2"`` (RY, RZ + CX).
        ansatz_reps: Repetitions of the ansatz.
        entanglement: Entangling pattern used by the feature map and the ansatz.
        paulis: Comma-separated Pauli strings of the ``"pauli"`` feature map.
        reuploads: Blocks of [feature map, ansatz], each ansatz with its own weights (data
            re-uploading, see the module docstring); ``1``: feature map, then ansatz.
        readout: ``"hamming_weight"``, ``"z_softmax"`` or ``"zz_softmax"`` (see
            :mod:`qmlops.readout`);
            descriptions saved before this field existed read as ``"hamming_weight"``.
    """

    n_qubits: int
    n_classes: int
    feature_map: str = "zz"
    feature_map_reps: int = 1
    ansatz: str = "real_amplitudes"
    ansatz_reps: int = 3
    entanglement: str = "reverse_linear"
    paulis: str = "Y,ZZ"
    reuploads: int = 1
    readout: str = DEFAULT_READOUT

    def __post_init__(self) -> None:
        check_integer("n_qubits", self.n_qubits, 1, MAX_QUBITS)
        check_integer("n_classes", self.n_classes, 2, 2**MAX_QUBITS)
        _check_choice("feature map", self.feature_map, FEATURE_MAPS)
        _check_choice("ansatz", self.ansatz, ANSATZE)
        _check_choice("entanglement", self.entanglement, ENTANGLEMENTS)
        _check_choice("readout", self.readout, READOUTS)
        check_integer("feature_map_reps", self.feature_map_reps, 1, 20)
        check_integer("ansatz_reps", self.ansatz_reps, 1, 50)
        check_integer("reuploads", self.reuploads, 1, MAX_REUPLOADS)
        if self.readout == "hamming_weight" and self.n_classes > self.n_qubits + 1:
            raise ConfigurationError(
                f"{self.n_classes} classes need at least {self.n_classes - 1} qubits with the "
                f"Hamming-weight readout; got n_qubits={self.n_qubits} (the softmax readouts "
                "take any number of classes)"
            )
        if self.feature_map == "zz" and self.n_qubits < 2:
            raise ConfigurationError("the zz feature map needs at least 2 qubits; use 'z'")
        if self.feature_map != "pauli":
            return
        paulis = [p.strip() for p in self.paulis.split(",") if p.strip()]
        if not paulis or any(set(p) - set("XYZ") or len(p) > self.n_qubits for p in paulis):
            raise ConfigurationError(
                f"paulis must be comma-separated strings of X, Y, Z of at most n_qubits "
                f"letters, got {self.paulis!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        """Return the description as a JSON-serialisable dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CircuitSpec:
        """Rebuild a description from :meth:`to_dict` output.

        Descriptions saved before an option existed load with its default (``reuploads=1``).

        Raises:
            ConfigurationError: If a field is missing, unknown or invalid.
        """
        try:
            return cls(**data)
        except TypeError as error:
            raise ConfigurationError(f"invalid circuit description: {error}") from None

    def feature_map_circuit(self) -> QuantumCircuit:
        """Build the data-encoding circuit, parameterised by ``x[0..n_qubits-1]``."""
        common: dict[str, Any] = {"reps": self.feature_map_reps, "parameter_prefix": FEATURE_PREFIX}
        if self.feature_map == "z":
            return z_feature_map(self.n_qubits, **common)
        if self.feature_map == "zz":
            return zz_feature_map(self.n_qubits, entanglement=self.entanglement, **common)
        paulis = [p.strip() for p in self.paulis.split(",") if p.strip()]
        return pauli_feature_map(
            self.n_qubits, entanglement=self.entanglement, paulis=paulis, **common
        )

    def ansatz_circuit(self) -> QuantumCircuit:
        """Build one trainable block, parameterised by ``θ[0..n_block_weights-1]``.

        With ``reuploads=1`` this is the whole trainable circuit; see :meth:`circuit` for the
        re-uploaded one.
        """
        builder = real_amplitudes if self.ansatz == "real_amplitudes" else efficient_su2
        return builder(
            self.n_qubits,
            reps=self.ansatz_reps,
            entanglement=self.entanglement,
            parameter_prefix=WEIGHT_PREFIX,
        )

    def circuit(self) -> QuantumCircuit:
        """Build the whole classifier circuit, without measurements.

        ``reuploads`` blocks of [feature map, ansatz]; every block shares the feature
        parameters ``x[..]`` and block ``r`` holds ``θ[r*P .. (r+1)*P - 1]``.
        """
        feature_map, ansatz = self.feature_map_circuit(), self.ansatz_circuit()
        if self.reuploads == 1:
            return feature_map.compose(ansatz)
        weights = ParameterVector(WEIGHT_PREFIX, self.n_circuit_weights)
        block_weights = list(ansatz.parameters)
        size = len(block_weights)
        circuit = QuantumCircuit(self.n_qubits)
        for upload in range(self.reuploads):
            circuit.compose(feature_map, inplace=True)
            renamed = dict(
                zip(block_weights, weights[upload * size : (upload + 1) * size], strict=True)
            )
            circuit.compose(ansatz.assign_parameters(renamed), inplace=True)
        return circuit

    @property
    def n_block_weights(self) -> int:
        """Trainable parameters of one ansatz block."""
        # Read on every evaluator call (input checks): count once, not by building the circuit.
        return _ansatz_parameters(self.ansatz, self.n_qubits, self.ansatz_reps, self.entanglement)

    @property
    def n_circuit_weights(self) -> int:
        """Trainable parameters of the circuit: ``reuploads`` ansatz blocks' rotation angles."""
        return self.reuploads * self.n_block_weights

    @property
    def n_weights(self) -> int:
        """All trainable parameters: the circuit's, then the readout head's."""
        return self.n_circuit_weights + self.class_readout().n_head_weights

    def class_readout(self) -> ClassReadout:
        """The readout's observables and classical head (see :mod:`qmlops.readout`)."""
        return ClassReadout(self.readout, self.n_qubits, self.n_classes)

    def class_of_outcome(self) -> np.ndarray:
        """Class index voted for by each computational basis state (length ``2**n_qubits``)."""
        return class_of_outcome(self.n_qubits, self.n_classes)


def circuit_summary(spec: CircuitSpec) -> dict[str, int]:
    """Width, depth and parameter counts of the classifier circuit (decomposed to basic gates).

    ``circuit_parameters`` counts every trainable weight, the readout head's included.
    """
    circuit = spec.circuit()
    decomposed = circuit.decompose(reps=3)
    return {
        "circuit_width": int(circuit.num_qubits),
        "circuit_depth": int(decomposed.depth()),
        "circuit_parameters": int(spec.n_weights),
        "circuit_gates": int(sum(decomposed.count_ops().values())),
    }


@functools.lru_cache(maxsize=256)
def _ansatz_parameters(ansatz: str, n_qubits: int, reps: int, entanglement: str) -> int:
    builder = real_amplitudes if ansatz == "real_amplitudes" else efficient_su2
    return int(
        builder(
            n_qubits, reps=reps, entanglement=entanglement, parameter_prefix=WEIGHT_PREFIX
        ).num_parameters
    )


def available_memory_bytes() -> int:
    """Physical memory of this machine in bytes (0 if it cannot be read)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 0


def default_memory_limit_bytes() -> int:
    """Default size-guard limit: half of this machine's physical memory (4 GiB if unknown)."""
    total = available_memory_bytes()
    return total // 2 if total else 4 * 2**30


@dataclass(frozen=True)
class ResourceEstimate:
    """What a training or inference job will cost before anything is simulated."""

    n_qubits: int
    statevector_bytes: int
    peak_memory_bytes: int
    circuit_evaluations: int


def estimate_resources(
    n_qubits: int, n_states_held: int, circuit_evaluations: int
) -> ResourceEstimate:
    """Estimate peak memory and circuit evaluations of a job.

    Args:
        n_qubits: Circuit width.
        n_states_held: Statevectors held in memory at once (cached encodings plus the working
            batch); at least 2 are always counted (state and scratch copy).
        circuit_evaluations: Circuit executions the job will run.

    Returns:
        The estimate.
    """
    statevector_bytes = COMPLEX_BYTES * 2**n_qubits
    return ResourceEstimate(
        n_qubits=n_qubits,
        statevector_bytes=statevector_bytes,
        peak_memory_bytes=statevector_bytes * max(2, n_states_held),
        circuit_evaluations=circuit_evaluations,
    )


def check_resources(
    estimate: ResourceEstimate, max_memory_bytes: int | None, max_circuit_evaluations: int | None
) -> None:
    """Refuse a job whose estimate exceeds the limits.

    Args:
        estimate: From :func:`estimate_resources`.
        max_memory_bytes: Memory limit; ``None`` means half of this machine's memory.
        max_circuit_evaluations: Evaluation limit; ``None`` means no limit.

    Raises:
        SizeLimitError: If a limit would be exceeded.
    """
    memory_limit = default_memory_limit_bytes() if max_memory_bytes is None else max_memory_bytes
    if estimate.peak_memory_bytes > memory_limit:
        raise SizeLimitError(
            f"{estimate.n_qubits} qubits need about {_gib(estimate.peak_memory_bytes)} of "
            f"statevector memory ({_gib(estimate.statevector_bytes)} per state), over the limit "
            f"of {_gib(memory_limit)}; use fewer qubits or raise max_memory_bytes"
        )
    if (
        max_circuit_evaluations is not None
        and estimate.circuit_evaluations > max_circuit_evaluations
    ):
        raise SizeLimitError(
            f"the job needs {estimate.circuit_evaluations:,} circuit evaluations, over the limit "
            f"of {max_circuit_evaluations:,}; lower maxiter, the sample count or raise "
            "max_circuit_evaluations"
        )


def _gib(n_bytes: int) -> str:
    return f"{n_bytes / 2**30:.3g} GiB"
