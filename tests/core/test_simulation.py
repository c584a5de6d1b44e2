"""The numpy engine and Aer agree; batching, mini-batch rows and counters behave."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from qmlops.circuits import CircuitSpec, class_of_outcome
from qmlops.errors import InputError
from qmlops.simulation import NUMPY_MAX_QUBITS, CircuitEvaluator

FAMILIES = list(
    itertools.product(
        ("zz", "z", "pauli"), ("real_amplitudes", "efficient_su2"), ("reverse_linear", "full")
    )
)


def random_inputs(spec: CircuitSpec, n_samples: int = 6, n_points: int = 3, seed: int = 0):
    rng = np.random.default_rng(seed)
    features = rng.uniform(0.0, np.pi, (n_samples, spec.n_qubits))
    weights = rng.uniform(-np.pi, np.pi, (n_points, spec.n_weights))
    return features, weights


@pytest.mark.parametrize(("feature_map", "ansatz", "entanglement"), FAMILIES)
def test_numpy_engine_matches_aer(feature_map: str, ansatz: str, entanglement: str) -> None:
    n_classes = 2 if entanglement == "reverse_linear" else 3
    spec = CircuitSpec(
        n_qubits=3,
        n_classes=n_classes,
        feature_map=feature_map,
        ansatz=ansatz,
        ansatz_reps=2,
        entanglement=entanglement,
    )
    X, W = random_inputs(spec)
    fast = CircuitEvaluator(spec, backend="numpy")
    reference = CircuitEvaluator(spec, backend="aer")
    assert fast.backend == "numpy"
    assert reference.backend == "aer"
    got = fast.class_probabilities([(X, W)])[0]
    expected = reference.class_probabilities([(X, W)])[0]
    assert got.shape == expected.shape == (3, 6, n_classes)
    assert np.max(np.abs(got - expected)) < 1e-9
    np.testing.assert_allclose(got.sum(axis=-1), 1.0, atol=1e-12)
    np.testing.assert_allclose(expected.sum(axis=-1), 1.0, atol=1e-12)
    # the probabilities depend on the weights (a constant output would also "match")
    assert np.max(np.abs(got[0] - got[1])) > 1e-3


def test_feature_map_reps_match_aer() -> None:
    spec = CircuitSpec(n_qubits=3, n_classes=2, feature_map="zz", feature_map_reps=2)
    X, W = random_inputs(spec, seed=3)
    got = CircuitEvaluator(spec, backend="numpy").class_probabilities([(X, W)])[0]
    expected = CircuitEvaluator(spec, backend="aer").class_probabilities([(X, W)])[0]
    assert np.max(np.abs(got - expected)) < 1e-9


def test_auto_backend_picks_numpy_for_exact_small_circuits() -> None:
    spec = CircuitSpec(n_qubits=3, n_classes=2)
    assert CircuitEvaluator(spec).backend == "numpy"
    assert CircuitEvaluator(spec, shots=100).backend == "aer"
    wide = CircuitSpec(n_qubits=NUMPY_MAX_QUBITS + 1, n_classes=2)
    assert CircuitEvaluator(wide).backend == "aer"


def test_shots_close_to_exact() -> None:
    spec = CircuitSpec(n_qubits=3, n_classes=2, feature_map="zz", ansatz="efficient_su2")
    X, W = random_inputs(spec, n_points=2)
    exact = CircuitEvaluator(spec, backend="numpy").class_probabilities([(X, W)])[0]
    sampled = CircuitEvaluator(spec, backend="aer", shots=20000, seed=1).class_probabilities(
        [(X, W)]
    )[0]
    assert sampled.shape == exact.shape
    assert np.max(np.abs(sampled - exact)) < 0.03
    np.testing.assert_allclose(sampled.sum(axis=-1), 1.0, atol=1e-12)


def test_shots_reproducible_per_seed() -> None:
    spec = CircuitSpec(n_qubits=2, n_classes=2, ansatz_reps=1)
    X, W = random_inputs(spec, n_samples=4, n_points=1)
    first = CircuitEvaluator(spec, backend="aer", shots=64, seed=7).class_probabilities([(X, W)])
    second = CircuitEvaluator(spec, backend="aer", shots=64, seed=7).class_probabilities([(X, W)])
    np.testing.assert_array_equal(first[0], second[0])
    # counts are multiples of 1 / shots
    np.testing.assert_allclose(first[0] * 64, np.round(first[0] * 64), atol=1e-9)


@pytest.mark.parametrize("backend", ["numpy", "aer"])
def test_nan_features_rejected_before_simulation(backend: str) -> None:
    spec = CircuitSpec(n_qubits=3, n_classes=2)
    X, W = random_inputs(spec)
    X[2, 1] = np.nan
    evaluator = CircuitEvaluator(spec, backend=backend)
    with pytest.raises(InputError, match="finite"):
        evaluator.class_probabilities([(X, W)])
    assert evaluator.counters.primitive_calls == 0
    assert evaluator.counters.circuit_evaluations == 0
    assert evaluator.counters.encoded_samples == 0


def test_infinite_weights_rejected() -> None:
    spec = CircuitSpec(n_qubits=3, n_classes=2)
    X, W = random_inputs(spec)
    W[0, 0] = np.inf
    evaluator = CircuitEvaluator(spec, backend="numpy")
    with pytest.raises(InputError, match="finite"):
        evaluator.class_probabilities([(X, W)])
    assert evaluator.counters.primitive_calls == 0


def test_wrong_shapes_rejected() -> None:
    spec = CircuitSpec(n_qubits=3, n_classes=2)
    X, W = random_inputs(spec)
    evaluator = CircuitEvaluator(spec, backend="numpy")
    with pytest.raises(InputError, match=r"features must have shape \(n_samples, 3\)"):
        evaluator.class_probabilities([(X[:, :2], W)])
    with pytest.raises(InputError, match="weights must have shape"):
        evaluator.class_probabilities([(X, W[:, :-1])])
    assert evaluator.counters.primitive_calls == 0


@pytest.mark.parametrize("backend", ["numpy", "aer"])
def test_one_primitive_call_per_batch(backend: str) -> None:
    spec = CircuitSpec(n_qubits=3, n_classes=3)
    X1, W1 = random_inputs(spec, n_samples=6, n_points=2, seed=1)
    X2, W2 = random_inputs(spec, n_samples=4, n_points=3, seed=2)
    evaluator = CircuitEvaluator(spec, backend=backend)
    results = evaluator.class_probabilities([(X1, W1), (X2, W2)])
    assert [r.shape for r in results] == [(2, 6, 3), (3, 4, 3)]
    assert evaluator.counters.primitive_calls == 1
    assert evaluator.counters.circuit_evaluations == 2 * 6 + 3 * 4
    assert evaluator.counters.per_call_sizes == [24]
    evaluator.class_probabilities([(X1, W1)])
    assert evaluator.counters.primitive_calls == 2
    assert evaluator.counters.circuit_evaluations == 24 + 12
    # each request gives the same numbers as when evaluated on its own
    alone = CircuitEvaluator(spec, backend=backend).class_probabilities([(X2, W2)])[0]
    np.testing.assert_allclose(results[1], alone, atol=1e-12)


def test_numpy_engine_caches_encodings() -> None:
    spec = CircuitSpec(n_qubits=3, n_classes=2)
    X, W = random_inputs(spec)
    evaluator = CircuitEvaluator(spec, backend="numpy")
    evaluator.class_probabilities([(X, W)])
    evaluator.class_probabilities([(X, W[:1])])
    evaluator.class_probabilities([(X, W, np.array([0, 1]))])
    assert evaluator.counters.encoded_samples == X.shape[0]


def test_features_changed_in_place_are_encoded_and_checked_again() -> None:
    # The evaluator remembers the last features it saw; an array changed in place between
    # calls is new data, and NaN written into it is still rejected.
    spec = CircuitSpec(n_qubits=3, n_classes=2)
    X, W = random_inputs(spec)
    evaluator = CircuitEvaluator(spec, backend="numpy")
    before = evaluator.class_probabilities([(X, W)])[0]
    X[1] += 0.5
    after = evaluator.class_probabilities([(X, W)])[0]
    fresh = CircuitEvaluator(spec, backend="numpy").class_probabilities([(X.copy(), W)])[0]
    np.testing.assert_allclose(after, fresh, atol=1e-12)
    assert not np.allclose(after[:, 1], before[:, 1])
    assert evaluator.counters.encoded_samples == 2 * X.shape[0]
    X[0, 0] = np.nan
    with pytest.raises(InputError, match="finite"):
        evaluator.class_probabilities([(X, W)])


@pytest.mark.parametrize("backend", ["numpy", "aer"])
def test_rows_select_a_mini_batch(backend: str) -> None:
    spec = CircuitSpec(n_qubits=3, n_classes=2, ansatz="efficient_su2")
    X, W = random_inputs(spec, n_samples=6, n_points=2)
    rows = np.array([0, 2, 5])
    evaluator = CircuitEvaluator(spec, backend=backend)
    (batch,) = evaluator.class_probabilities([(X, W, rows)])
    assert batch.shape == (2, 3, 2)
    assert evaluator.counters.circuit_evaluations == 2 * 3
    (subset,) = CircuitEvaluator(spec, backend=backend).class_probabilities([(X[rows], W)])
    np.testing.assert_allclose(batch, subset, atol=1e-12)
    (full,) = CircuitEvaluator(spec, backend=backend).class_probabilities([(X, W)])
    np.testing.assert_allclose(batch, full[:, rows], atol=1e-12)


def test_class_of_outcome_is_parity_for_two_classes() -> None:
    expected = [bin(i).count("1") % 2 for i in range(8)]
    assert class_of_outcome(3, 2).tolist() == expected
    assert CircuitSpec(n_qubits=3, n_classes=2).class_of_outcome().tolist() == expected


def test_class_of_outcome_hamming_weight_round_robin() -> None:
    assert class_of_outcome(3, 3).tolist() == [bin(i).count("1") % 3 for i in range(8)]
    assert class_of_outcome(3, 4).tolist() == [bin(i).count("1") for i in range(8)]


@pytest.mark.parametrize(
    "spec_params",
    [{"feature_map": "z"}, {"feature_map": "pauli", "paulis": "Y,Z"}],
    ids=["z", "pauli"],
)
def test_one_qubit_circuit(spec_params: dict[str, str]) -> None:
    # n_qubits=1 is allowed (CircuitConfig ge=1); the default `paulis` ("Y,ZZ"), unused by the
    # "z" feature map, must not block it.
    spec = CircuitSpec(n_qubits=1, n_classes=2, **spec_params)
    X, W = random_inputs(spec)
    got = CircuitEvaluator(spec, backend="numpy").class_probabilities([(X, W)])[0]
    expected = CircuitEvaluator(spec, backend="aer").class_probabilities([(X, W)])[0]
    assert np.max(np.abs(got - expected)) < 1e-9


@pytest.mark.parametrize(("feature_map", "ansatz", "entanglement"), FAMILIES)
def test_numpy_encoding_matches_aer_statevectors(
    feature_map: str, ansatz: str, entanglement: str
) -> None:
    from qiskit_aer import AerSimulator

    spec = CircuitSpec(
        n_qubits=3, n_classes=2, feature_map=feature_map, ansatz=ansatz, entanglement=entanglement
    )
    X, _ = random_inputs(spec, n_samples=4)
    got = CircuitEvaluator(spec, backend="numpy").encode(X)  # (D, N)
    circuit = spec.feature_map_circuit()
    binds = {p: X[:, i].tolist() for i, p in enumerate(circuit.parameters)}
    circuit.save_statevector()
    result = AerSimulator(method="statevector").run(circuit, parameter_binds=[binds]).result()
    for column in range(X.shape[0]):
        expected = np.asarray(result.get_statevector(column))
        # equal up to a global phase, which no probability depends on
        overlap = np.vdot(expected, got[:, column])
        assert abs(abs(overlap) - 1.0) < 1e-9
        assert np.max(np.abs(got[:, column] * np.conj(overlap) - expected)) < 1e-9


@pytest.mark.parametrize(
    ("feature_map", "ansatz"), [("zz", "real_amplitudes"), ("pauli", "efficient_su2")]
)
@pytest.mark.parametrize(("n_samples", "n_points"), [(20, 1), (5, 4)])
def test_unitary_and_per_sample_paths_agree_with_aer(
    feature_map: str, ansatz: str, n_samples: int, n_points: int
) -> None:
    # The numpy engine either runs the ansatz on every sample or builds its unitary and
    # multiplies; both must give Aer's numbers, whichever "auto" would pick.
    spec = CircuitSpec(n_qubits=3, n_classes=3, feature_map=feature_map, ansatz=ansatz)
    X, W = random_inputs(spec, n_samples=n_samples, n_points=n_points, seed=5)
    expected = CircuitEvaluator(spec, backend="aer").class_probabilities([(X, W)])[0]
    for path in ("always", "never", "auto"):
        evaluator = CircuitEvaluator(spec, backend="numpy")
        evaluator.unitary_path = path
        got = evaluator.class_probabilities([(X, W, np.arange(n_samples)[::-1])])[0]
        assert np.max(np.abs(got - expected[:, ::-1])) < 1e-9, path


def test_worker_threads_give_the_same_numbers(monkeypatch: pytest.MonkeyPatch) -> None:
    import qmlops.simulation as simulation

    # Split even this small batch over the worker threads.
    monkeypatch.setattr(simulation, "_PARALLEL_MIN_AMPLITUDES", 1)
    spec = CircuitSpec(n_qubits=10, n_classes=2, feature_map="zz", ansatz_reps=1)
    X, W = random_inputs(spec, n_samples=64, n_points=2, seed=2)
    single = CircuitEvaluator(spec, backend="numpy", simulator_threads=1)
    double = CircuitEvaluator(spec, backend="numpy", simulator_threads=2)
    assert (single.threads, double.threads) == (1, 2)
    for evaluator in (single, double):
        evaluator.unitary_path = "never"
    one = single.class_probabilities([(X, W)])[0]
    two = double.class_probabilities([(X, W)])[0]
    np.testing.assert_allclose(one, two, atol=1e-12)
    assert np.max(np.abs(one[0] - one[1])) > 1e-4


def test_a_call_too_small_for_worker_threads_runs_as_one_block(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import qmlops.simulation as simulation

    # Blocks repeat the Python between the matrix products, which holds the interpreter lock
    # while concurrent trainings on other threads wait for it.
    passes: list[int] = []
    run_fused = simulation.run_fused

    def counted(*args, **kwargs):
        passes.append(1)
        return run_fused(*args, **kwargs)

    monkeypatch.setattr(simulation, "run_fused", counted)
    monkeypatch.setattr(simulation, "_BLOCK_AMPLITUDES", 2**6)  # would be many blocks
    spec = CircuitSpec(n_qubits=4, n_classes=2, ansatz_reps=1)
    X, W = random_inputs(spec, n_samples=8, n_points=4, seed=3)
    evaluator = CircuitEvaluator(spec, backend="numpy", simulator_threads=2)
    evaluator.unitary_path = "never"
    small = evaluator.class_probabilities([(X, W)])[0]
    assert len(passes) == 1
    monkeypatch.setattr(simulation, "_PARALLEL_MIN_AMPLITUDES", 1)  # now large enough to split
    split = evaluator.class_probabilities([(X, W)])[0]
    assert len(passes) > 2
    np.testing.assert_allclose(small, split, atol=1e-12)


def test_automatic_threads_follow_threadpoolctl_limits() -> None:
    from threadpoolctl import threadpool_limits

    from qmlops.concurrency import available_cores, resolve_threads

    spec = CircuitSpec(n_qubits=2, n_classes=2)
    assert resolve_threads(3) == 3
    assert 1 <= resolve_threads(0) <= available_cores()
    with threadpool_limits(limits=1):
        assert resolve_threads(0) == 1
        assert CircuitEvaluator(spec).threads == 1
        assert CircuitEvaluator(spec, simulator_threads=2).threads == 2


def test_negative_threads_rejected() -> None:
    from qmlops.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="simulator_threads"):
        CircuitEvaluator(CircuitSpec(n_qubits=2, n_classes=2), simulator_threads=-1)


def test_programs_are_compiled_once_per_circuit_description() -> None:
    from qmlops.simulation import _programs

    spec = CircuitSpec(n_qubits=3, n_classes=2, ansatz_reps=4)
    _programs.cache_clear()
    CircuitEvaluator(spec)
    CircuitEvaluator(spec)
    assert _programs.cache_info().misses == 1
    assert _programs.cache_info().hits == 1
