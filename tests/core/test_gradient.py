"""The adjoint gradient of the numpy engine equals parameter shift and finite differences."""

from __future__ import annotations

import itertools
import pickle

import numpy as np
import pytest
from core_circuits import check_adjoint_gradient, every_stage_circuit, random_states
from qiskit.quantum_info import Operator

import qmlops.simulation as simulation
import qmlops.statevector as statevector
from qmlops import QuantumClassifier
from qmlops.circuits import ANSATZE, ENTANGLEMENTS, FEATURE_MAPS, CircuitSpec
from qmlops.errors import ConfigurationError
from qmlops.simulation import CircuitEvaluator
from qmlops.statevector import (
    Readout,
    Tape,
    compile_program,
    fuse_program,
    group_cotangents,
    group_matrices,
    run_fused,
    weight_gradient,
)
from qmlops.training import cross_entropy_cotangent


@pytest.mark.parametrize(
    ("feature_map", "ansatz", "entanglement"),
    [
        *itertools.product(FEATURE_MAPS, ANSATZE, ["reverse_linear"]),
        *itertools.product(["zz"], ANSATZE, [e for e in ENTANGLEMENTS if e != "reverse_linear"]),
    ],
)
@pytest.mark.parametrize(("n_qubits", "n_classes", "batch"), [(3, 2, 1), (5, 3, 7), (6, 4, 12)])
def test_adjoint_gradient_equals_parameter_shift_and_finite_differences(
    feature_map: str, ansatz: str, entanglement: str, n_qubits: int, n_classes: int, batch: int
) -> None:
    spec = CircuitSpec(
        n_qubits=n_qubits,
        n_classes=n_classes,
        feature_map=feature_map,
        ansatz=ansatz,
        ansatz_reps=2,
        entanglement=entanglement,
    )
    rng = np.random.default_rng(n_qubits * 100 + batch)
    features = rng.uniform(0.0, np.pi, (15, n_qubits))
    labels = rng.integers(0, n_classes, 15)
    weights = rng.uniform(-np.pi, np.pi, spec.n_weights)
    rows = np.sort(rng.choice(15, size=batch, replace=False))
    shifted = check_adjoint_gradient(spec, features, weights, labels[rows], rows)
    assert np.max(np.abs(shifted)) > 1e-3  # a gradient that is not trivially zero


@pytest.mark.parametrize("group_qubits", [1, 3])
def test_adjoint_gradient_of_every_gate_kind(group_qubits: int) -> None:
    # Every kind of stage, then two weights used a second time, on a loss that weighs every
    # basis state.
    circuit, theta = every_stage_circuit()
    circuit.rx(theta[0], 3)
    circuit.rz(theta[4], 1)
    fused = fuse_program(compile_program(circuit, weights=list(theta)), group_qubits)
    states = random_states(4, 3, seed=5)
    rng = np.random.default_rng(6)
    readout = Readout.of(np.arange(16) % 5, 5)
    per_class = rng.normal(size=(3, 5))  # dL/dp of the linear loss L = Σ per_class * p

    def loss(weights: np.ndarray) -> float:
        amplitudes = run_fused(fused, states[None].copy(), weights[None])
        return float(np.sum(per_class * readout(amplitudes)[0]))

    weights = rng.uniform(-np.pi, np.pi, len(theta))
    matrices = group_matrices(fused, weights[None])
    tape = Tape()
    amplitudes = run_fused(fused, states[None].copy(), matrices=matrices, tape=tape)
    carried = (per_class @ readout.observables).T * np.conj(amplitudes[0])
    gradient = weight_gradient(
        fused, weights, group_cotangents(fused, matrices, tape, carried[None])[0]
    )
    step = 1e-5
    expected = [
        (loss(weights + step * unit) - loss(weights - step * unit)) / (2 * step)
        for unit in np.eye(len(theta))
    ]
    np.testing.assert_allclose(gradient, expected, atol=1e-9)


@pytest.mark.parametrize("monomials", [True, False], ids=["monomials", "factors"])
@pytest.mark.parametrize("group_qubits", [1, 4])
def test_dense_moments_give_the_unitary_and_its_gradient_for_every_gate_kind(
    group_qubits: int, monomials: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Moments from their monomial matrices, or (past the size limit) from one-qubit factors.
    if not monomials:
        monkeypatch.setattr(statevector, "_MONOMIAL_MAX_ENTRIES", 0)
    # Every kind of stage, fixed stages after the last rotation, and two weights used twice.
    circuit, theta = every_stage_circuit()
    circuit.rx(theta[0], 3)
    circuit.rz(theta[4], 1)
    circuit.p(theta[3], 0)
    circuit.cx(1, 2)
    circuit.cz(0, 3)
    fused = fuse_program(compile_program(circuit, weights=list(theta)), group_qubits)
    dense = fused.dense
    assert (dense._monomial_plan is not None) == monomials
    rng = np.random.default_rng(11)
    weights = rng.uniform(-np.pi, np.pi, (2, len(theta)))
    run = dense.run(weights)
    for point in range(2):
        bound = circuit.assign_parameters(dict(zip(theta, weights[point], strict=True)))
        np.testing.assert_allclose(run.unitaries[point], Operator(bound).data, atol=1e-12)
    # The forward pass's unitaries, built without the prefixes.
    np.testing.assert_allclose(dense.unitaries(weights), run.unitaries, atol=1e-12)
    # L = 2 Re Tr(Γ^H U) has dL/dθ = 2 Re Tr(Γ^H dU/dθ): what the gradient reads for Γ.
    cotangents = rng.normal(size=(2, 16, 16)) + 1j * rng.normal(size=(2, 16, 16))

    def loss(point: int, at: np.ndarray) -> float:
        unitary = dense.run(at[None]).unitaries[0]
        return float(2.0 * np.real(np.trace(cotangents[point].conj().T @ unitary)))

    gradient = dense.gradient(run, cotangents.conj().swapaxes(-1, -2), len(theta))
    step = 1e-6
    for point in range(2):
        expected = [
            (loss(point, weights[point] + step * unit) - loss(point, weights[point] - step * unit))
            / (2 * step)
            for unit in np.eye(len(theta))
        ]
        np.testing.assert_allclose(gradient[point], expected, atol=1e-7)


def test_blocks_and_worker_threads_give_the_same_gradient(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    spec = CircuitSpec(n_qubits=5, n_classes=2, ansatz="efficient_su2", ansatz_reps=2)
    rng = np.random.default_rng(8)
    features = rng.uniform(0.0, np.pi, (9, 5))
    targets = rng.integers(0, 2, 6)
    weights = rng.uniform(-np.pi, np.pi, spec.n_weights)
    rows = np.array([8, 0, 3, 3, 5, 1])
    whole = CircuitEvaluator(spec, backend="numpy", simulator_threads=1)
    whole.unitary_path = "never"
    expected = whole.loss_gradient(features, weights, cross_entropy_cotangent(targets), rows)
    # Blocks of one sample each, on two worker threads.
    monkeypatch.setattr(simulation, "_TAPE_AMPLITUDES", 2**5)
    monkeypatch.setattr(simulation, "_PARALLEL_MIN_TAPE_AMPLITUDES", 1)
    split = CircuitEvaluator(spec, backend="numpy", simulator_threads=2)
    split.unitary_path = "never"
    got = split.loss_gradient(features, weights, cross_entropy_cotangent(targets), rows)
    assert split.counters.primitive_calls == 1
    np.testing.assert_allclose(got[0], expected[0], atol=1e-13)
    np.testing.assert_allclose(got[1], expected[1], atol=1e-12)


def test_group_cotangents_summed_slice_by_slice_give_the_same_gradient(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    spec = CircuitSpec(n_qubits=6, n_classes=2, ansatz="efficient_su2", ansatz_reps=2)
    rng = np.random.default_rng(5)
    features = rng.uniform(0.0, np.pi, (7, 6))
    targets = rng.integers(0, 2, 7)
    weights = rng.uniform(-np.pi, np.pi, spec.n_weights)
    whole = CircuitEvaluator(spec, backend="numpy", simulator_threads=1)
    whole.unitary_path = "never"
    expected = whole.loss_gradient(features, weights, cross_entropy_cotangent(targets))[1]
    # One product per slice: the lowest group's 4 products of 16 x 16 become 4 slices.
    monkeypatch.setattr(statevector, "_SUMMED_SLICE_ENTRIES", 1)
    sliced = CircuitEvaluator(spec, backend="numpy", simulator_threads=1)
    sliced.unitary_path = "never"
    got = sliced.loss_gradient(features, weights, cross_entropy_cotangent(targets))[1]
    np.testing.assert_allclose(got, expected, atol=1e-12)


def test_tape_blocks_give_every_worker_thread_the_same_share() -> None:
    # 48 samples at 16 qubits: three blocks of 2**20 amplitudes would leave a thread idle.
    assert simulation._tape_blocks(48, 2**16, 2) == ([(0, 12), (12, 24), (24, 36), (36, 48)], 2)
    # 12 qubits, 48 samples: two threads; 8 qubits: too small a call to share.
    assert simulation._tape_blocks(48, 2**12, 2) == ([(0, 24), (24, 48)], 2)
    assert simulation._tape_blocks(48, 2**8, 2) == ([(0, 48)], 1)
    for n_samples, dim, threads in [(455, 2**16, 2), (455, 2**12, 2), (7, 2**18, 3), (5, 2**4, 4)]:
        blocks, used = simulation._tape_blocks(n_samples, dim, threads)
        sizes = [stop - start for start, stop in blocks]
        assert [start for start, _ in blocks[1:]] == [stop for _, stop in blocks[:-1]]
        assert (blocks[0][0], blocks[-1][1]) == (0, n_samples)
        assert min(sizes) >= 1
        assert max(sizes) - min(sizes) <= 1
        assert max(sizes) * dim <= max(dim, simulation._TAPE_AMPLITUDES)
        assert len(blocks) % used == 0
        parallel = n_samples * dim >= simulation._PARALLEL_MIN_TAPE_AMPLITUDES
        assert used == (threads if parallel else 1)


def test_gradient_buffers_are_kept_between_calls_until_released(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    spec = CircuitSpec(n_qubits=5, n_classes=2, ansatz="efficient_su2", ansatz_reps=2)
    rng = np.random.default_rng(3)
    features = rng.uniform(0.0, np.pi, (9, 5))
    targets = rng.integers(0, 2, 9)
    weights = rng.uniform(-np.pi, np.pi, spec.n_weights)
    fresh = CircuitEvaluator(spec, backend="numpy", simulator_threads=1)
    fresh.unitary_path = "never"
    expected = fresh.loss_gradient(features, weights, cross_entropy_cotangent(targets))[1]
    # Blocks of two samples, one after the other on the calling thread.
    monkeypatch.setattr(simulation, "_TAPE_AMPLITUDES", 2**6)
    evaluator = CircuitEvaluator(spec, backend="numpy", simulator_threads=1)
    evaluator.unitary_path = "never"
    first = evaluator.loss_gradient(features, weights, cross_entropy_cotangent(targets))[1]
    kept = list(evaluator._gradient_buffers)
    assert len(kept) == 1
    few = np.array([4, 1, 7])
    smaller = evaluator.loss_gradient(features, weights, cross_entropy_cotangent(targets[few]), few)
    assert evaluator._gradient_buffers == kept  # the same tapes again, not fresh ones
    again = evaluator.loss_gradient(features, weights, cross_entropy_cotangent(targets))[1]
    np.testing.assert_allclose(first, expected, atol=1e-12)
    np.testing.assert_array_equal(again, first)
    np.testing.assert_allclose(
        smaller[1],
        fresh.loss_gradient(features, weights, cross_entropy_cotangent(targets[few]), few)[1],
        atol=1e-12,
    )
    copied = pickle.loads(pickle.dumps(evaluator))
    assert copied._gradient_buffers == []
    evaluator.release_gradient_buffers()
    assert evaluator._gradient_buffers == []


@pytest.mark.parametrize(("n_samples", "threads"), [(5, 1), (9, 2)])
def test_kept_gradient_buffers_fit_the_size_guards_plan(
    monkeypatch: pytest.MonkeyPatch, n_samples: int, threads: int
) -> None:
    # Six qubits: smaller registers take the dense-moment gradient, which keeps no tapes.
    spec = CircuitSpec(n_qubits=6, n_classes=3, ansatz="efficient_su2", ansatz_reps=2)
    rng = np.random.default_rng(4)
    features = rng.uniform(0.0, np.pi, (n_samples, 6))
    targets = rng.integers(0, 3, n_samples)
    weights = rng.uniform(-np.pi, np.pi, spec.n_weights)
    monkeypatch.setattr(simulation, "_TAPE_AMPLITUDES", 2**8)  # blocks of up to 4 samples
    monkeypatch.setattr(simulation, "_PARALLEL_MIN_TAPE_AMPLITUDES", 1)
    evaluator = CircuitEvaluator(spec, backend="numpy", simulator_threads=threads)
    evaluator.unitary_path = "never"
    evaluator.loss_gradient(features, weights, cross_entropy_cotangent(targets))
    held = sum(
        buffer.nbytes
        for kept in evaluator._gradient_buffers
        for tape in [*kept.tapes, kept.scratch]
        for buffer in tape._buffers
    ) + sum(b.nbytes for kept in evaluator._gradient_buffers for b in kept.workspace._buffers)
    planned = simulation.adjoint_states_held(spec, n_samples, threads) * 16 * 2**6
    assert held <= planned
    if threads == 1:  # one set of buffers, the largest block's: the plan is not far above
        assert held >= 0.9 * planned


def test_fitted_classifier_keeps_no_gradient_buffers() -> None:
    # Six qubits: smaller registers take the dense-moment gradient, which keeps no tapes.
    rng = np.random.default_rng(6)
    X, y = rng.uniform(0.0, np.pi, (16, 6)), rng.integers(0, 2, 16)
    model = QuantumClassifier(maxiter=2, gradient="adjoint", random_state=0).fit(X, y)
    assert model._evaluator_._gradient_buffers == []


@pytest.mark.parametrize("ansatz", ANSATZE)
def test_training_with_the_adjoint_gradient_follows_parameter_shift(ansatz: str) -> None:
    rng = np.random.default_rng(9)
    X = rng.uniform(0.0, np.pi, (30, 4))
    y = rng.integers(0, 3, 30)
    models = {
        gradient: QuantumClassifier(
            feature_map="zz",
            ansatz=ansatz,
            maxiter=12,
            batch_size=10,
            gradient=gradient,
            random_state=4,
        ).fit(X[:24], y[:24], validation_data=(X[24:], y[24:]))
        for gradient in ("adjoint", "parameter_shift")
    }
    adjoint, shifted = models["adjoint"], models["parameter_shift"]
    assert adjoint.gradient_ == "adjoint"
    assert shifted.gradient_ == "parameter_shift"
    np.testing.assert_allclose(adjoint.weights_, shifted.weights_, atol=1e-7)
    np.testing.assert_allclose(adjoint.loss_curve_, shifted.loss_curve_, atol=1e-9)
    assert adjoint.validation_accuracy_curve_ == shifted.validation_accuracy_curve_
    assert np.max(np.abs(adjoint.weights_ - adjoint.initial_weights_)) > 1e-2
    # One call per step either way; the adjoint one evaluates the current point only.
    assert adjoint.primitive_calls_ == shifted.primitive_calls_ == 13
    assert adjoint.circuit_evaluations_ == 12 * (10 + 6) + 24 + 6


def test_auto_gradient_is_adjoint_on_the_numpy_engine_only(
    binary_data: tuple[np.ndarray, np.ndarray],
) -> None:
    X, y = binary_data
    exact = QuantumClassifier(maxiter=2, random_state=0).fit(X, y)
    on_aer = QuantumClassifier(maxiter=1, backend="aer", batch_size=4, random_state=0).fit(X, y)
    cobyla = QuantumClassifier(optimizer="cobyla", maxiter=2, random_state=0).fit(X, y)
    assert (exact.backend_, exact.gradient_) == ("numpy", "adjoint")
    assert (on_aer.backend_, on_aer.gradient_) == ("aer", "parameter_shift")
    assert cobyla.gradient_ is None


@pytest.mark.parametrize(
    "params",
    [
        {"gradient": "backprop"},
        {"gradient": "adjoint", "shots": 100},
        {"gradient": "adjoint", "backend": "aer"},
    ],
)
def test_impossible_gradient_refused_before_simulation(
    params: dict[str, object], binary_data: tuple[np.ndarray, np.ndarray]
) -> None:
    X, y = binary_data
    model = QuantumClassifier(maxiter=1, **params)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="gradient"):
        model.fit(X, y)
    assert not hasattr(model, "weights_")


def test_size_guard_counts_the_adjoint_tape() -> None:
    adjoint = QuantumClassifier(gradient="adjoint", simulator_threads=1, batch_size=64)
    shifted = QuantumClassifier(gradient="parameter_shift", simulator_threads=1, batch_size=64)
    _, with_tape = adjoint.plan(100, 0, 12, 2)
    _, without = shifted.plan(100, 0, 12, 2)
    spec = CircuitSpec(
        n_qubits=12,
        n_classes=2,
        feature_map="z",
        ansatz="efficient_su2",
        reuploads=adjoint.reuploads,
        readout=adjoint.readout,
    )
    tape = simulation.adjoint_states_held(spec, 64, 1)
    assert tape > 0
    assert with_tape.peak_memory_bytes == without.peak_memory_bytes + tape * 16 * 2**12
