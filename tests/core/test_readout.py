"""The softmax readouts: Pauli-Z expectations (``z_softmax``), with neighbouring qubits'
``Z_q Z_{q+1}`` too (``zz_softmax``), into a trainable softmax layer.

Exact against Aer, its gradients (adjoint, parameter shift, finite differences) agree with the
head's weights included, it trains, serialises, keeps one simulator call per step, and device
runs plan it like any readout (its device results are tested in ``test_devices.py``).
"""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
from core_data import blobs

from qmlops.circuits import CircuitSpec
from qmlops.classifier import QuantumClassifier
from qmlops.errors import ConfigurationError
from qmlops.readout import ClassReadout, z_eigenvalues, zz_eigenvalues
from qmlops.simulation import CircuitEvaluator, observable_means, z_product_qubits
from qmlops.training import Objective, cross_entropy, cross_entropy_cotangent

SHAPES = [
    # (qubits, classes, ansatz): the readout takes more classes than qubits + 1
    (1, 2, "real_amplitudes"),
    (2, 3, "efficient_su2"),
    (3, 6, "real_amplitudes"),
    (4, 3, "efficient_su2"),
    (5, 2, "real_amplitudes"),
]


SOFTMAX_READOUTS = ["z_softmax", "zz_softmax"]


def _spec(n_qubits: int, n_classes: int, ansatz: str, readout: str = "z_softmax") -> CircuitSpec:
    feature_map = "z" if n_qubits == 1 else "zz"
    return CircuitSpec(
        n_qubits=n_qubits,
        n_classes=n_classes,
        feature_map=feature_map,
        ansatz=ansatz,
        ansatz_reps=2,
        readout=readout,
    )


def _weights(spec: CircuitSpec, rng: np.random.Generator, n_points: int = 1) -> np.ndarray:
    circuit = rng.uniform(-np.pi, np.pi, (n_points, spec.n_circuit_weights))
    head = rng.normal(0.0, 1.5, (n_points, spec.class_readout().n_head_weights))
    return np.concatenate([circuit, head], axis=1)


def _loss(evaluator: CircuitEvaluator, X, targets, weights) -> float:  # type: ignore[no-untyped-def]
    probabilities = evaluator.class_probabilities([(X, weights[None, :])])[0]
    return float(cross_entropy(probabilities, targets)[0])


def _finite_differences(evaluator: CircuitEvaluator, X, targets, weights) -> np.ndarray:  # type: ignore[no-untyped-def]
    step = 1e-6
    return np.array(
        [
            (
                _loss(evaluator, X, targets, weights + step * unit)
                - _loss(evaluator, X, targets, weights - step * unit)
            )
            / (2 * step)
            for unit in np.eye(weights.shape[0])
        ]
    )


# -- the description -------------------------------------------------------------------------


def test_spec_counts_head_weights_and_lifts_the_class_limit() -> None:
    spec = CircuitSpec(n_qubits=2, n_classes=5, ansatz_reps=1, readout="z_softmax")
    assert spec.n_weights == spec.n_circuit_weights + 5 * 2 + 5
    hamming = CircuitSpec(n_qubits=2, n_classes=3, ansatz_reps=1)
    assert hamming.n_weights == hamming.n_circuit_weights == 4  # real_amplitudes: 2 x 2
    with pytest.raises(ConfigurationError, match="Hamming-weight readout"):
        CircuitSpec(n_qubits=2, n_classes=5)
    with pytest.raises(ConfigurationError, match="unknown readout"):
        CircuitSpec(n_qubits=2, n_classes=2, readout="parity")
    with pytest.raises(ConfigurationError, match="unknown readout"):
        QuantumClassifier(readout="parity").plan(10, 0, 2, 2)
    # zz_softmax: 2 single-qubit values and 1 neighbour correlator per class, plus the bias
    pairs = CircuitSpec(n_qubits=2, n_classes=5, ansatz_reps=1, readout="zz_softmax")
    assert pairs.n_weights == pairs.n_circuit_weights + 5 * 3 + 5


def test_zz_observables_are_single_z_then_neighbour_products() -> None:
    # Basis index b holds qubit q as bit q: Z_q is -1 where that bit is set
    assert zz_eigenvalues(3).tolist() == [
        [1, -1, 1, -1, 1, -1, 1, -1],
        [1, 1, -1, -1, 1, 1, -1, -1],
        [1, 1, 1, 1, -1, -1, -1, -1],
        [1, -1, -1, 1, 1, -1, -1, 1],
        [1, 1, -1, -1, -1, -1, 1, 1],
    ]
    readout = ClassReadout("zz_softmax", n_qubits=3, n_classes=2)
    assert readout.n_values == 5
    assert readout.n_head_weights == 2 * 5 + 2
    assert z_product_qubits(readout.observables()) == [[0], [1], [2], [0, 1], [1, 2]]
    # One qubit has no neighbour: zz_softmax is z_softmax there
    single = ClassReadout("zz_softmax", n_qubits=1, n_classes=2)
    np.testing.assert_array_equal(single.observables(), z_eigenvalues(1))


def test_descriptions_saved_before_the_readout_read_as_hamming_weight() -> None:
    data = CircuitSpec(n_qubits=2, n_classes=2).to_dict()
    del data["readout"]
    assert CircuitSpec.from_dict(data).readout == "hamming_weight"


@pytest.mark.parametrize("name", SOFTMAX_READOUTS)
def test_head_backward_is_the_softmax_chain_rule(name: str) -> None:
    # Given a linear loss L = Σ g * softmax(W v + b) of the values and the head
    readout = ClassReadout(name, n_qubits=3, n_classes=4)
    rng = np.random.default_rng(0)
    values = rng.uniform(-1, 1, (5, readout.n_values))
    head = rng.normal(size=readout.n_head_weights)
    g = rng.normal(size=(5, 4))

    def loss(v: np.ndarray, h: np.ndarray) -> float:
        return float(np.sum(g * readout.probabilities(v[None], h[None])[0]))

    # When the head is differentiated analytically
    by_values, by_head = readout.backward(values, head, g)

    # Then both agree with central differences
    step = 1e-6
    expected_head = [
        (loss(values, head + step * unit) - loss(values, head - step * unit)) / (2 * step)
        for unit in np.eye(head.shape[0])
    ]
    expected_values = [
        (loss(values + step * unit, head) - loss(values - step * unit, head)) / (2 * step)
        for unit in np.eye(values.size).reshape(-1, *values.shape)
    ]
    np.testing.assert_allclose(by_head, expected_head, atol=1e-8)
    np.testing.assert_allclose(by_values.ravel(), expected_values, atol=1e-8)


# -- engines ---------------------------------------------------------------------------------


@pytest.mark.parametrize("readout", SOFTMAX_READOUTS)
@pytest.mark.parametrize(("n_qubits", "n_classes", "ansatz"), SHAPES)
def test_numpy_engine_matches_aer(n_qubits: int, n_classes: int, ansatz: str, readout: str) -> None:
    spec = _spec(n_qubits, n_classes, ansatz, readout)
    rng = np.random.default_rng(n_qubits)
    X = rng.uniform(0, 2.2, (5, n_qubits))
    weights = _weights(spec, rng, n_points=3)
    numpy = CircuitEvaluator(spec, backend="numpy")
    aer = CircuitEvaluator(spec, backend="aer")

    # The measured values are every qubit's <Z> (and, for zz_softmax, every neighbouring
    # pair's <Z Z>), the same on both engines
    values = numpy.readout_values([(X, weights[:, : spec.n_circuit_weights])])[0]
    n_values = n_qubits if readout == "z_softmax" else 2 * n_qubits - 1
    assert values.shape == (3, 5, n_values)
    assert np.all(np.abs(values) <= 1 + 1e-12)
    np.testing.assert_allclose(
        aer.readout_values([(X, weights[:, : spec.n_circuit_weights])])[0], values, atol=1e-9
    )
    # and so are the class probabilities, through the head, by both numpy paths
    expected = aer.class_probabilities([(X, weights)])[0]
    assert expected.shape == (3, 5, n_classes)
    np.testing.assert_allclose(expected.sum(axis=-1), 1.0, atol=1e-12)
    for path in ("always", "never"):
        numpy.unitary_path = path
        np.testing.assert_allclose(
            numpy.class_probabilities([(X, weights)])[0], expected, atol=1e-9
        )


@pytest.mark.parametrize("readout", SOFTMAX_READOUTS)
def test_shot_estimates_converge_to_the_exact_values(readout: str) -> None:
    spec = _spec(3, 3, "efficient_su2", readout)
    rng = np.random.default_rng(2)
    X = rng.uniform(0, 2.2, (4, 3))
    weights = _weights(spec, rng)
    circuit = weights[:, : spec.n_circuit_weights]
    exact = CircuitEvaluator(spec, backend="numpy")
    sampled = CircuitEvaluator(spec, shots=20_000, backend="aer", seed=1)
    # 20000 shots: each <Z> has a standard error of at most 0.007
    np.testing.assert_allclose(
        sampled.readout_values([(X, circuit)])[0],
        exact.readout_values([(X, circuit)])[0],
        atol=0.03,
    )
    np.testing.assert_allclose(
        sampled.class_probabilities([(X, weights)])[0],
        exact.class_probabilities([(X, weights)])[0],
        atol=0.05,
    )


def test_observable_means_of_packed_bits() -> None:
    # Two cells of 4 shots on 3 qubits: outcomes 0b001, 0b011, 0b001, 0b000 and all 0b111
    outcomes = np.array([[[1, 3, 1, 0], [7, 7, 7, 7]]], dtype=np.uint8)[..., None]
    got = observable_means(outcomes, z_eigenvalues(3))
    expected = [[[1 - 2 * 3 / 4, 1 - 2 * 1 / 4, 1.0], [-1.0, -1.0, -1.0]]]
    np.testing.assert_allclose(got, expected)
    assert z_eigenvalues(2).tolist() == [[1, -1, 1, -1], [1, 1, -1, -1]]
    # The zz readout's observables: the same Z means, then Z0 Z1 and Z1 Z2
    means = observable_means(outcomes, zz_eigenvalues(3))
    np.testing.assert_allclose(means[..., :3], expected)
    np.testing.assert_allclose(means[..., 3:], [[[0.0, 1 / 2], [1.0, 1.0]]])


# -- gradients -------------------------------------------------------------------------------


@pytest.mark.parametrize("readout", SOFTMAX_READOUTS)
@pytest.mark.parametrize(("n_qubits", "n_classes", "ansatz"), SHAPES[1:4])
@pytest.mark.parametrize("path", ["always", "never"])
def test_adjoint_parameter_shift_and_finite_differences_agree(
    n_qubits: int, n_classes: int, ansatz: str, path: str, readout: str
) -> None:
    # Given a mini-batch of the data and weights with a non-trivial head
    spec = _spec(n_qubits, n_classes, ansatz, readout)
    rng = np.random.default_rng(10 + n_qubits)
    X = rng.uniform(0, 2.2, (9, n_qubits))
    y = rng.integers(0, n_classes, 9)
    rows = np.array([0, 2, 3, 7, 8])
    weights = _weights(spec, rng)[0]
    evaluator = CircuitEvaluator(spec, backend="numpy")
    evaluator.unitary_path = path

    # When the gradient is taken three ways
    _, adjoint, _ = evaluator.loss_gradient(X, weights, cross_entropy_cotangent(y[rows]), rows)
    objective = Objective(CircuitEvaluator(spec, backend="aer"), X, y)
    objective.rows, objective.targets = rows, y[rows]
    shifted, record = objective.parameter_shift_gradient(weights)
    expected = _finite_differences(evaluator, X[rows], y[rows], weights)

    # Then they agree, the head's weights included
    assert adjoint.shape == (spec.n_weights,)
    head = slice(spec.n_circuit_weights, None)
    assert np.max(np.abs(expected[head])) > 1e-2
    assert np.max(np.abs(expected[: spec.n_circuit_weights])) > 1e-2
    np.testing.assert_allclose(adjoint, shifted, atol=1e-9)
    np.testing.assert_allclose(adjoint, expected, atol=1e-7)
    assert record.loss == pytest.approx(_loss(evaluator, X[rows], y[rows], weights), abs=1e-12)


# -- the estimator ---------------------------------------------------------------------------


@pytest.mark.parametrize("gradient", ["adjoint", "parameter_shift"])
def test_fit_lowers_the_loss_with_one_simulator_call_per_step(
    gradient: str, simulator_calls: Counter[str]
) -> None:
    X, y = blobs(30, 2, 3)
    clf = QuantumClassifier(
        readout="z_softmax",
        ansatz_reps=2,
        maxiter=25,
        batch_size=12,
        backend="numpy",
        gradient=gradient,
        random_state=0,
    ).fit(X, y, validation_data=(X[:6], y[:6]))
    assert clf.loss_curve_[-1] < 0.8 * clf.loss_curve_[0]
    assert clf.weights_.shape == (clf.spec_.n_weights,)
    assert clf.primitive_calls_ == clf.maxiter + 1
    assert len(clf.validation_accuracy_curve_) == clf.maxiter + 1
    if gradient == "parameter_shift":
        assert simulator_calls["CircuitEvaluator.readout_values"] == clf.maxiter


@pytest.mark.parametrize("readout", SOFTMAX_READOUTS)
def test_both_gradients_train_to_the_same_weights(readout: str) -> None:
    X, y = blobs(20, 2, 3)
    params = {"readout": readout, "ansatz_reps": 1, "maxiter": 8, "random_state": 4}
    adjoint = QuantumClassifier(gradient="adjoint", **params).fit(X, y)  # type: ignore[arg-type]
    shifted = QuantumClassifier(gradient="parameter_shift", **params).fit(X, y)  # type: ignore[arg-type]
    np.testing.assert_allclose(adjoint.weights_, shifted.weights_, atol=1e-8)


@pytest.mark.parametrize("optimizer", ["spsa", "cobyla"])
def test_gradient_free_optimizers_train_the_head_too(optimizer: str) -> None:
    X, y = blobs(16, 2, 2)
    # One upload: COBYLA's first 12 steps move one weight each, and the head's come last.
    clf = QuantumClassifier(
        readout="z_softmax",
        reuploads=1,
        optimizer=optimizer,
        ansatz_reps=1,
        maxiter=12,
        random_state=0,
    ).fit(X, y)
    head = slice(clf.spec_.n_circuit_weights, None)
    assert not np.array_equal(clf.weights_[head], clf.initial_weights_[head])
    assert clf.primitive_calls_ == clf.maxiter + 1


@pytest.mark.parametrize("readout", SOFTMAX_READOUTS)
def test_state_round_trip_predicts_identically(readout: str) -> None:
    X, y = blobs(16, 2, 3)
    clf = QuantumClassifier(readout=readout, ansatz_reps=1, maxiter=4, random_state=0)
    clf.fit(X, y)
    state = json.loads(json.dumps(clf.to_state()))
    assert state["spec"]["readout"] == readout
    restored = QuantumClassifier.from_state(state)
    np.testing.assert_array_equal(restored.predict_proba(X), clf.predict_proba(X))
    assert restored.get_params() == {**clf.get_params(), "callback": None}
    # the circuit binds the circuit's weights; the head stays classical
    assert clf.circuit_.num_parameters == clf.spec_.n_qubits


def test_models_saved_before_the_readout_load_as_hamming_weight() -> None:
    X, y = blobs(12, 2, 2)
    clf = QuantumClassifier(
        readout="hamming_weight", reuploads=1, ansatz_reps=1, maxiter=2, random_state=0
    ).fit(X, y)
    state = clf.to_state()
    del state["params"]["readout"]
    del state["spec"]["readout"]
    restored = QuantumClassifier.from_state(state)
    assert restored.readout == "hamming_weight"
    np.testing.assert_array_equal(restored.predict_proba(X), clf.predict_proba(X))


# -- devices ---------------------------------------------------------------------------------


def test_device_runs_plan_the_readout_before_anything_runs(
    simulator_calls: Counter[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from qmlops import noisy
    from qmlops.budget import plan_device_run
    from qmlops.config import DeviceConfig

    def no_transpiling(*args: object, **kwargs: object) -> None:
        raise AssertionError("planning transpiled a circuit")

    monkeypatch.setattr(noisy, "transpile_for_device", no_transpiling)
    model = noisy.DeviceClassifier(
        device="fake_manila", device_shots=10, readout="z_softmax", optimizer="spsa", maxiter=2
    )
    for train_on in ("device", "ideal"):
        config = DeviceConfig(device="fake_manila", shots=10, train_on=train_on)
        plan = plan_device_run(
            config, model, n_train=10, n_validation=0, n_test=2, n_features=2, n_classes=2
        )
        assert plan is not None
        assert plan.estimate.primitive_calls == (2 + 1 + 1 if train_on == "device" else 1)
    assert sum(simulator_calls.values()) == 0
