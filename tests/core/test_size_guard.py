"""The size guard refuses before any simulator call; the engine switch-over width is pinned."""

from __future__ import annotations

from collections import Counter

import pytest
from core_data import blobs

from qmlops.circuits import CircuitSpec
from qmlops.classifier import QuantumClassifier
from qmlops.errors import SizeLimitError
from qmlops.simulation import NUMPY_MAX_QUBITS, CircuitEvaluator

GUARDS = {
    "memory": ({"max_memory_bytes": 1024}, "statevector memory"),
    "evaluations": ({"max_circuit_evaluations": 10}, "circuit evaluations, over the limit"),
}


@pytest.mark.parametrize("backend", ["numpy", "aer"])
@pytest.mark.parametrize("guard", sorted(GUARDS))
def test_the_size_guard_refuses_before_any_simulator_call(
    simulator_calls: Counter[str], guard: str, backend: str
) -> None:
    X, y = blobs(24, 2, 2)
    limit, message = GUARDS[guard]
    settings = {"maxiter": 2, "batch_size": None, "backend": backend, "random_state": 0}

    # Given a job over the limit, when it is fitted, then it is refused with nothing simulated
    with pytest.raises(SizeLimitError, match=message):
        QuantumClassifier(**settings, **limit).fit(X, y)  # type: ignore[arg-type]
    assert sum(simulator_calls.values()) == 0

    # And the counters do see the simulator: the same job within the limits runs it
    QuantumClassifier(**settings).fit(X, y)  # type: ignore[arg-type]
    assert simulator_calls["CircuitEvaluator.class_probabilities"] > 0
    if backend == "aer":
        assert simulator_calls["EstimatorV2.run"] > 0


def test_plan_simulates_nothing(simulator_calls: Counter[str]) -> None:
    clf = QuantumClassifier(maxiter=5, max_memory_bytes=2**40)
    spec, estimate = clf.plan(n_samples=40, n_validation=8, n_features=20, n_classes=2)
    assert spec.n_qubits == estimate.n_qubits == 20
    assert estimate.statevector_bytes == 16 * 2**20
    assert sum(simulator_calls.values()) == 0


def test_numpy_engine_runs_exact_circuits_up_to_18_qubits_and_aer_above() -> None:
    # Pinned: the switch-over is a measured trade-off; moving it should be a deliberate change.
    assert NUMPY_MAX_QUBITS == 18
    widest_numpy = CircuitSpec(n_qubits=18, n_classes=2, feature_map="z", ansatz_reps=1)
    narrowest_aer = CircuitSpec(n_qubits=19, n_classes=2, feature_map="z", ansatz_reps=1)
    assert CircuitEvaluator(widest_numpy).backend == "numpy"
    assert CircuitEvaluator(narrowest_aer).backend == "aer"
    # Shots always go to Aer, whatever the width; an explicit choice is honoured.
    assert CircuitEvaluator(CircuitSpec(n_qubits=2, n_classes=2), shots=10).backend == "aer"
    assert CircuitEvaluator(narrowest_aer, backend="numpy").backend == "numpy"
