"""Circuits, states and reference gradients shared by the core tests of the numpy engine."""

from __future__ import annotations

import numpy as np
from qiskit import QuantumCircuit
from qiskit.circuit import ParameterVector

from qmlops.circuits import CircuitSpec
from qmlops.simulation import CircuitEvaluator
from qmlops.training import cross_entropy, cross_entropy_cotangent

SHIFT = np.pi / 2


def random_states(n_qubits: int, columns: int, seed: int) -> np.ndarray:
    """Normalized random complex states ``(2**n_qubits, columns)``."""
    rng = np.random.default_rng(seed)
    states = rng.normal(size=(2**n_qubits, columns)) + 1j * rng.normal(size=(2**n_qubits, columns))
    return states / np.linalg.norm(states, axis=0)


def every_stage_circuit() -> tuple[QuantumCircuit, ParameterVector]:
    """Four qubits that fuse into every kind of stage, in an order that interleaves them.

    Weight rotations of all four kinds, fixed one-qubit gates, permutations (cx, swap, x) and
    diagonals (cz), with six weights ``t``.
    """
    theta = ParameterVector("t", 6)
    circuit = QuantumCircuit(4)
    circuit.h(range(4))
    circuit.rx(theta[0], 0)
    circuit.ry(theta[1], 1)
    circuit.rz(theta[2], 2)
    circuit.p(theta[3], 3)
    circuit.cx(0, 2)
    circuit.swap(1, 3)
    circuit.x(2)
    circuit.cz(0, 1)
    circuit.cz(2, 3)
    circuit.s(0)
    circuit.sx(1)
    circuit.ry(theta[4], 2)
    circuit.cx(3, 0)
    circuit.rx(theta[5], 3)
    return circuit, theta


def parameter_shift_gradient(
    evaluator: CircuitEvaluator,
    features: np.ndarray,
    weights: np.ndarray,
    targets: np.ndarray,
    rows: np.ndarray,
) -> np.ndarray:
    """The mean cross-entropy's gradient from 2P shifted points (the trainer's reference rule)."""
    n_weights = weights.shape[0]
    shifts = np.concatenate([np.eye(n_weights), -np.eye(n_weights)]) * SHIFT
    points = np.concatenate([weights[None], weights[None] + shifts])
    probabilities = evaluator.class_probabilities([(features, points, rows)])[0]
    picked = np.clip(probabilities[:, np.arange(rows.shape[0]), targets], 1e-10, 1.0)
    dp = (picked[1 : n_weights + 1] - picked[n_weights + 1 :]) / 2.0
    return np.asarray(-(dp / picked[0][None, :]).mean(axis=1))


def finite_difference_gradient(
    evaluator: CircuitEvaluator,
    features: np.ndarray,
    weights: np.ndarray,
    targets: np.ndarray,
    rows: np.ndarray,
    step: float = 1e-5,
) -> np.ndarray:
    """The mean cross-entropy's gradient by central differences."""
    n_weights = weights.shape[0]
    points = np.concatenate(
        [weights[None] + step * np.eye(n_weights), weights[None] - step * np.eye(n_weights)]
    )
    probabilities = evaluator.class_probabilities([(features, points, rows)])[0]
    losses = cross_entropy(probabilities, targets)
    return np.asarray((losses[:n_weights] - losses[n_weights:]) / (2 * step))


def check_adjoint_gradient(
    spec: CircuitSpec,
    features: np.ndarray,
    weights: np.ndarray,
    targets: np.ndarray,
    rows: np.ndarray,
    difference_atol: float = 1e-9,
) -> np.ndarray:
    """Assert the adjoint gradient equals parameter shift and finite differences on every path.

    The paths: dense moments (up to 6 qubits), the ansatz unitary (small circuits, many
    samples) and state by state.

    Returns:
        The parameter-shift gradient, for the caller's own checks.
    """
    evaluator = CircuitEvaluator(spec, backend="numpy")
    shifted = parameter_shift_gradient(evaluator, features, weights, targets, rows)
    differences = finite_difference_gradient(evaluator, features, weights, targets, rows)
    expected = evaluator.class_probabilities([(features, weights[None], rows)])[0][0]
    # Dense moments on small registers, the unitary's columns, and state by state.
    for path in ("dense", "always", "never") if spec.n_qubits <= 6 else ("always", "never"):
        evaluator.unitary_path = path
        probabilities, gradient, _ = evaluator.loss_gradient(
            features, weights, cross_entropy_cotangent(targets), rows
        )
        np.testing.assert_allclose(probabilities, expected, atol=1e-12, err_msg=path)
        np.testing.assert_allclose(gradient, shifted, atol=1e-9, err_msg=path)
        np.testing.assert_allclose(gradient, differences, atol=difference_atol, err_msg=path)
    return shifted
