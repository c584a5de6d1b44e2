"""The numpy engine against an independent reference, ``qiskit.quantum_info.Statevector``.

Every feature map x ansatz x entanglement combination, on randomized circuits (repetitions,
class count, Pauli strings, inputs and a mini-batch of rows drawn from a seeded generator) at
a small random width (through both of the engine's paths: running the ansatz on every sample,
or multiplying by its unitary) and at 10 qubits. The reference readout is written out here
(Hamming weight modulo the class count) rather than taken from the code under test.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from qiskit.quantum_info import Statevector

from qmlops.circuits import ANSATZE, ENTANGLEMENTS, FEATURE_MAPS, CircuitSpec
from qmlops.simulation import CircuitEvaluator

COMBINATIONS = list(itertools.product(FEATURE_MAPS, ANSATZE, ENTANGLEMENTS))
WIDEST = 10


def _random_spec(
    rng: np.random.Generator, n_qubits: int, feature_map: str, ansatz: str, entanglement: str
) -> CircuitSpec:
    letters = np.array(list("XYZ"))
    paulis = ",".join(
        "".join(rng.choice(letters, size=rng.integers(1, 3))) for _ in range(rng.integers(1, 3))
    )
    # One repetition of each at the widest circuit keeps the reference simulation short.
    most_reps = 1 if n_qubits == WIDEST else 3
    return CircuitSpec(
        n_qubits=n_qubits,
        n_classes=int(rng.integers(2, min(n_qubits + 1, 4) + 1)),
        feature_map=feature_map,
        feature_map_reps=int(rng.integers(1, min(most_reps, 2) + 1)),
        ansatz=ansatz,
        ansatz_reps=int(rng.integers(1, most_reps + 1)),
        entanglement=entanglement,
        paulis=paulis,
    )


def _reference_probabilities(
    spec: CircuitSpec, features: np.ndarray, weights: np.ndarray
) -> np.ndarray:
    """Class probabilities ``(M, N, K)`` from Qiskit's own statevector simulation."""
    feature_map, ansatz = spec.feature_map_circuit(), spec.ansatz_circuit()
    hamming = np.array([bin(state).count("1") for state in range(2**spec.n_qubits)])
    out = np.zeros((weights.shape[0], features.shape[0], spec.n_classes))
    for n, sample in enumerate(features):
        # Parameters bind in Qiskit's order (by name: x[0], x[1], ..., θ[0], θ[1], ...).
        encoded = Statevector(feature_map.assign_parameters(sample))
        for m, point in enumerate(weights):
            probabilities = encoded.evolve(ansatz.assign_parameters(point)).probabilities()
            out[m, n] = np.bincount(
                hamming % spec.n_classes, weights=probabilities, minlength=spec.n_classes
            )
    return out


@pytest.mark.parametrize(("feature_map", "ansatz", "entanglement"), COMBINATIONS)
def test_numpy_engine_matches_statevector_on_random_circuits(
    feature_map: str, ansatz: str, entanglement: str
) -> None:
    rng = np.random.default_rng(COMBINATIONS.index((feature_map, ansatz, entanglement)))
    for n_qubits in (int(rng.integers(2, 6)), WIDEST):
        spec = _random_spec(rng, n_qubits, feature_map, ansatz, entanglement)
        features = rng.uniform(-np.pi, np.pi, (3, n_qubits))
        weights = rng.uniform(-np.pi, np.pi, (2, spec.n_weights))
        rows = np.array([2, 0]) if n_qubits < WIDEST else np.array([1])  # a mini-batch
        expected = _reference_probabilities(spec, features[rows], weights)
        # the probabilities depend on the weights (a constant output would also "match")
        assert np.max(np.abs(expected[0] - expected[1])) > 1e-4, spec
        # Both engine paths at the small width; at 10 qubits the unitary would cost seconds.
        for path in ("never", "always") if n_qubits < WIDEST else ("never",):
            evaluator = CircuitEvaluator(spec, backend="numpy")
            evaluator.unitary_path = path
            got = evaluator.class_probabilities([(features, weights, rows)])[0]
            assert got.shape == expected.shape
            assert np.max(np.abs(got - expected)) < 1e-9, (path, spec)
