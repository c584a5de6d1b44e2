"""The fused numpy kernels apply exactly the circuit's unitary, whatever the grouping."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from core_circuits import every_stage_circuit, random_states
from qiskit import QuantumCircuit
from qiskit.circuit import ParameterVector
from qiskit.quantum_info import Operator

import qmlops.simulation as simulation
from qmlops.circuits import ANSATZE, ENTANGLEMENTS, CircuitSpec
from qmlops.concurrency import single_threaded_blas
from qmlops.simulation import CircuitEvaluator
from qmlops.statevector import (
    LocalStage,
    PermutationStage,
    compile_program,
    fuse_program,
    run_fused,
    run_program,
)


def as_engine_view(states: np.ndarray, real: bool) -> np.ndarray:
    return states.view(np.float64) if real else states


@pytest.mark.parametrize(
    ("ansatz", "entanglement"), list(itertools.product(ANSATZE, ENTANGLEMENTS))
)
@pytest.mark.parametrize("group_qubits", [1, 2, 5])
def test_fused_ansatz_equals_gate_by_gate(
    ansatz: str, entanglement: str, group_qubits: int
) -> None:
    spec = CircuitSpec(
        n_qubits=5, n_classes=2, ansatz=ansatz, ansatz_reps=2, entanglement=entanglement
    )
    circuit = spec.ansatz_circuit()
    program = compile_program(circuit, weights=list(circuit.parameters))
    fused = fuse_program(program, group_qubits)
    weights = np.random.default_rng(1).uniform(-np.pi, np.pi, (3, spec.n_weights))
    states = random_states(5, 4, seed=2)

    expected = np.broadcast_to(states, (3, *states.shape)).copy()
    run_program(program, as_engine_view(expected, program.is_real), weights)
    # States shared by all weight points, as the evaluator passes them.
    got = run_fused(fused, as_engine_view(states[None].copy(), fused.is_real), weights)
    got = got.view(np.complex128) if fused.is_real else got

    assert got.shape == expected.shape
    assert np.max(np.abs(got - expected)) < 1e-12
    assert all(
        count <= group_qubits
        for stage in fused.stages
        if isinstance(stage, LocalStage)
        for _, count in stage.groups
    )
    # The CX layers collapse: fewer stages than gates.
    assert len(fused.stages) < len(program.operations)


def test_fused_program_matches_qiskit_operator_on_mixed_gates() -> None:
    circuit, theta = every_stage_circuit()
    program = compile_program(circuit, weights=list(theta))
    fused = fuse_program(program, group_qubits=3)
    assert {type(stage).__name__ for stage in fused.stages} >= {
        "LocalStage",
        "PermutationStage",
        "DiagonalStage",
    }
    weights = np.random.default_rng(3).uniform(-np.pi, np.pi, (2, 6))
    states = random_states(4, 3, seed=4)
    got = run_fused(fused, states[None].copy(), weights)
    for point in range(2):
        unitary = Operator(circuit.assign_parameters(weights[point])).data
        assert np.max(np.abs(got[point] - unitary @ states)) < 1e-12


def test_consecutive_permutations_compose_into_one_stage() -> None:
    spec = CircuitSpec(n_qubits=6, n_classes=2, ansatz="real_amplitudes", ansatz_reps=3)
    circuit = spec.ansatz_circuit()
    fused = fuse_program(compile_program(circuit, weights=list(circuit.parameters)), 4)
    kinds = [type(stage) for stage in fused.stages]
    # RY layer, one gather for each CX chain, ..., RY layer.
    assert kinds == [LocalStage, PermutationStage] * 3 + [LocalStage]


@pytest.mark.parametrize(
    ("ansatz", "entanglement"), list(itertools.product(ANSATZE, ENTANGLEMENTS))
)
def test_evaluator_matches_aer_across_qubit_groups(ansatz: str, entanglement: str) -> None:
    # 6 qubits: more than one group of one-qubit gates per layer.
    spec = CircuitSpec(
        n_qubits=6, n_classes=3, ansatz=ansatz, ansatz_reps=2, entanglement=entanglement
    )
    rng = np.random.default_rng(6)
    features = rng.uniform(0.0, np.pi, (5, 6))
    weights = rng.uniform(-np.pi, np.pi, (2, spec.n_weights))
    fast = CircuitEvaluator(spec, backend="numpy")
    fast.unitary_path = "never"
    got = fast.class_probabilities([(features, weights)])[0]
    expected = CircuitEvaluator(spec, backend="aer").class_probabilities([(features, weights)])[0]
    assert np.max(np.abs(got - expected)) < 1e-9
    assert np.max(np.abs(got[0] - got[1])) > 1e-3


def test_blocks_over_points_and_samples_give_the_same_numbers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    spec = CircuitSpec(n_qubits=5, n_classes=2, ansatz_reps=2)
    rng = np.random.default_rng(7)
    features = rng.uniform(0.0, np.pi, (9, 5))
    weights = rng.uniform(-np.pi, np.pi, (3, spec.n_weights))
    rows = np.array([8, 0, 3, 3, 5])
    whole = CircuitEvaluator(spec, backend="numpy", simulator_threads=1)
    whole.unitary_path = "never"
    expected = whole.class_probabilities([(features, weights, rows)])[0]
    # Tiny blocks: one (point, sample) pair each, split over two worker threads.
    monkeypatch.setattr(simulation, "_BLOCK_AMPLITUDES", 2**5)
    monkeypatch.setattr(simulation, "_PARALLEL_MIN_AMPLITUDES", 1)
    split = CircuitEvaluator(spec, backend="numpy", simulator_threads=2)
    split.unitary_path = "never"
    got = split.class_probabilities([(features, weights, rows)])[0]
    np.testing.assert_allclose(got, expected, atol=1e-13)


def test_single_threaded_blas_is_shared_and_restored() -> None:
    from threadpoolctl import threadpool_info, threadpool_limits

    # Read from the thread that sets the limits: OpenBLAS reports a limit set in another
    # thread wrongly there, although the limit itself is process-wide.
    def blas_threads() -> set[int]:
        return {info["num_threads"] for info in threadpool_info() if info["user_api"] == "blas"}

    with threadpool_limits(limits=2, user_api="blas"):
        before = blas_threads()
        first = single_threaded_blas()
        second = single_threaded_blas()
        first.__enter__()
        assert blas_threads() == {1}
        second.__enter__()
        first.__exit__(None, None, None)
        # One user is still inside: the limit must hold until the last one leaves.
        assert blas_threads() == {1}
        second.__exit__(None, None, None)
        assert blas_threads() == before
        assert 2 in before


def test_feature_angles_as_polynomials_equal_qiskit_bindings() -> None:
    # The feature maps' expressions are evaluated as fitted polynomials; one that is not
    # multilinear (x**2, sin x) falls back to binding every sample.
    x = ParameterVector("x", 3)
    circuit = QuantumCircuit(3)
    circuit.p(2.0 * (np.pi - x[0]) * (np.pi - x[1]) * (np.pi - x[2]), 0)
    circuit.rz(x[1] - 0.5, 1)
    curved = circuit.copy()
    curved.ry(x[2] * x[2], 2)
    curved.rx(x[0].sin(), 0)
    features = np.random.default_rng(4).uniform(-np.pi, np.pi, (9, 3))
    for built, polynomial in ((circuit, True), (curved, False)):
        program = compile_program(built, features=list(x))
        assert (program._multilinear is not None) == polynomial
        expected = [
            [float(e.bind_all(dict(zip(x, row, strict=True)))) for row in features]
            for e in program.expressions
        ]
        np.testing.assert_allclose(program.feature_angles(features), expected, atol=1e-12)
