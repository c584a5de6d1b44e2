"""QuantumClassifier: the scikit-learn contract, determinism, optimizers and serialisation."""

from __future__ import annotations

import json

import numpy as np
import pytest
from core_data import blobs
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import MinMaxScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

from qmlops import QuantumClassifier
from qmlops.circuits import CircuitSpec
from qmlops.errors import ModelFormatError
from qmlops.simulation import CircuitEvaluator
from qmlops.training import Objective, cross_entropy, optimize

EXPECTED_FAILED_CHECKS = {
    "check_classifiers_train": (
        "asserts > 83% training accuracy; a randomly initialised variational circuit trained "
        "for maxiter=3 steps (kept tiny so the checks stay fast) does not reach it"
    ),
    "check_class_weight_classifiers": (
        "weighs class 0 a million times more than the others on unscaled, overlapping blobs "
        "and asserts > 87% of test predictions are class 0; a unitary circuit on the encoded "
        "states cannot send nearly every input to one class (48% after 30 steps for 2 "
        "classes); the weighted loss and its gradient are tested in test_training_options"
    ),
}


@parametrize_with_checks(
    [
        QuantumClassifier(maxiter=3, random_state=0, batch_size=None),
        QuantumClassifier(
            maxiter=3, random_state=0, batch_size=None, reuploads=2, readout="z_softmax"
        ),
    ],
    expected_failed_checks=lambda estimator: EXPECTED_FAILED_CHECKS,
)
def test_sklearn_compatible_estimator(estimator, check) -> None:
    check(estimator)


def fitted(
    X: np.ndarray, y: np.ndarray, validation_data=None, **params: object
) -> QuantumClassifier:
    settings = {"maxiter": 3, "random_state": 0, "batch_size": None, **params}
    return QuantumClassifier(**settings).fit(X, y, validation_data)  # type: ignore[arg-type]


def test_predict_before_fit_raises_not_fitted(binary_data) -> None:
    X, _ = binary_data
    with pytest.raises(NotFittedError):
        QuantumClassifier().predict(X)
    with pytest.raises(NotFittedError):
        QuantumClassifier().predict_proba(X)


def test_clone_is_unfitted_with_equal_params(binary_data) -> None:
    X, y = binary_data
    clf = fitted(X, y, ansatz_reps=1, learning_rate=0.2)
    copy = clone(clf)
    assert copy.get_params() == clf.get_params()
    assert not hasattr(copy, "weights_")
    assert hasattr(clf, "weights_")


def test_grid_search_over_pipeline() -> None:
    X, y = blobs(24, 2, 2)
    X = X * 10.0 - 3.0  # raw features: the pipeline scales them to angles
    pipeline = Pipeline(
        [
            ("scale", MinMaxScaler((0, 2.2))),
            ("clf", QuantumClassifier(maxiter=3, random_state=0)),
        ]
    )
    search = GridSearchCV(pipeline, {"clf__ansatz_reps": [1, 2]}, cv=2).fit(X, y)
    assert search.best_params_["clf__ansatz_reps"] in (1, 2)
    assert search.cv_results_["mean_test_score"].shape == (2,)
    predictions = search.predict(X)
    assert predictions.shape == (24,)
    assert set(predictions) <= {0, 1}


def test_same_random_state_is_deterministic(binary_data) -> None:
    X, y = binary_data
    first = fitted(X, y, batch_size=8)
    second = fitted(X, y, batch_size=8)
    np.testing.assert_array_equal(first.weights_, second.weights_)
    assert first.loss_curve_ == second.loss_curve_
    np.testing.assert_array_equal(first.predict_proba(X), second.predict_proba(X))


def test_different_random_state_differs(binary_data) -> None:
    X, y = binary_data
    first = fitted(X, y, random_state=0)
    other = fitted(X, y, random_state=1)
    assert not np.allclose(first.weights_, other.weights_)
    assert not np.allclose(first.initial_weights_, other.initial_weights_)


@pytest.mark.parametrize("optimizer", ["adam", "spsa", "cobyla", "lbfgs"])
def test_optimizers_record_history(optimizer: str, three_class_data) -> None:
    X, y = three_class_data
    maxiter = 4
    records = []
    clf = fitted(X, y, optimizer=optimizer, maxiter=maxiter, callback=records.append)
    if optimizer in ("cobyla", "lbfgs"):  # COBYLA's evaluations, L-BFGS's convergence
        assert 2 <= len(clf.loss_curve_) <= maxiter + 1
    else:
        assert len(clf.loss_curve_) == maxiter + 1
    assert len(clf.train_accuracy_curve_) == len(clf.loss_curve_)
    assert clf.n_iter_ == len(clf.loss_curve_) - 1
    assert [r.iteration for r in records] == list(range(len(clf.loss_curve_)))
    assert [r.loss for r in records] == clf.loss_curve_
    assert all(np.isfinite(clf.loss_curve_))
    assert clf.validation_accuracy_curve_ == []
    probabilities = clf.predict_proba(X)
    assert probabilities.shape == (X.shape[0], 3)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-12)
    assert np.all(probabilities >= 0)
    assert set(clf.predict(X)) <= set(clf.classes_)
    assert clf.primitive_calls_ >= len(clf.loss_curve_)
    assert clf.circuit_evaluations_ > 0


def test_cobyla_history_with_enough_iterations(binary_data) -> None:
    X, y = binary_data
    clf = fitted(X, y, optimizer="cobyla", ansatz_reps=1, maxiter=12)  # 8 weights
    assert 2 <= len(clf.loss_curve_) <= 13
    assert clf.loss_curve_[-1] <= clf.loss_curve_[0]


@pytest.mark.parametrize("optimizer", ["adam", "spsa", "cobyla", "lbfgs"])
def test_size_guard_estimate_bounds_the_work(optimizer: str, binary_data) -> None:
    X, y = binary_data
    clf = QuantumClassifier(optimizer=optimizer, maxiter=3, batch_size=8, random_state=0)
    _, estimate = clf.plan(X.shape[0], 0, X.shape[1], 2)
    clf.set_params(max_circuit_evaluations=estimate.circuit_evaluations).fit(X, y)
    assert 0 < clf.circuit_evaluations_ <= estimate.circuit_evaluations


def test_final_loss_is_loss_of_final_weights(binary_data) -> None:
    X, y = binary_data
    clf = fitted(X, y, maxiter=3)
    probabilities = clf.predict_proba(X)[None]
    targets = np.searchsorted(clf.classes_, y)
    assert cross_entropy(probabilities, targets)[0] == pytest.approx(clf.loss_curve_[-1], abs=1e-12)


def test_adam_improves_on_separable_data(binary_data) -> None:
    X, y = binary_data
    clf = fitted(X, y, maxiter=10, learning_rate=0.2)
    assert clf.loss_curve_[-1] < clf.loss_curve_[0]


def _gradient_setup():
    spec = CircuitSpec(n_qubits=2, n_classes=2, feature_map="zz", ansatz="efficient_su2")
    rng = np.random.default_rng(3)
    X = rng.uniform(0.0, 2.2, (8, 2))
    y = np.array([0, 1, 0, 1, 1, 0, 0, 1])
    w = rng.uniform(-np.pi, np.pi, spec.n_weights)
    evaluator = CircuitEvaluator(spec, backend="numpy")

    def loss(weights: np.ndarray) -> float:
        return float(cross_entropy(evaluator.class_probabilities([(X, weights[None])])[0], y)[0])

    h = 1e-5
    eye = np.eye(spec.n_weights)
    finite_difference = np.array(
        [(loss(w + h * eye[j]) - loss(w - h * eye[j])) / (2 * h) for j in range(spec.n_weights)]
    )
    return evaluator, X, y, w, finite_difference


def test_parameter_shift_gradient_matches_finite_difference() -> None:
    evaluator, X, y, w, finite_difference = _gradient_setup()
    n_weights = w.shape[0]
    objective = Objective(evaluator, X, y)
    objective.next_batch()
    shifts = np.concatenate([np.eye(n_weights), -np.eye(n_weights)]) * (np.pi / 2)
    probabilities, record = objective(np.concatenate([w[None], w[None] + shifts]))
    assert record.loss == pytest.approx(float(cross_entropy(probabilities[:1], y)[0]), abs=1e-15)
    picked = probabilities[:, np.arange(y.shape[0]), y]
    dp = (picked[1 : n_weights + 1] - picked[n_weights + 1 :]) / 2.0
    gradient = -(dp / picked[0][None, :]).mean(axis=1)
    assert np.max(np.abs(finite_difference)) > 1e-3  # a non-trivial gradient
    np.testing.assert_allclose(gradient, finite_difference, atol=1e-5)


def test_first_adam_step_follows_the_true_gradient() -> None:
    # With zero moments, Adam's first step is -lr * g / (|g| + eps) component-wise.
    evaluator, X, y, w, finite_difference = _gradient_setup()
    learning_rate = 0.05
    result = optimize(
        Objective(evaluator, X, y),
        w,
        optimizer="adam",
        maxiter=1,
        learning_rate=learning_rate,
        rng=np.random.default_rng(0),
    )
    expected = w - learning_rate * finite_difference / (np.abs(finite_difference) + 1e-8)
    clear = np.abs(finite_difference) > 1e-3
    assert clear.sum() >= w.shape[0] // 2
    np.testing.assert_allclose(result.weights[clear], expected[clear], atol=1e-6)
    assert len(result.history) == 2


def test_state_round_trip_predicts_identically(three_class_data) -> None:
    X, y = three_class_data
    clf = fitted(X, y, feature_map="zz", ansatz="real_amplitudes")
    state = json.loads(json.dumps(clf.to_state()))
    restored = QuantumClassifier.from_state(state)
    np.testing.assert_array_equal(restored.predict(X), clf.predict(X))
    np.testing.assert_array_equal(restored.predict_proba(X), clf.predict_proba(X))
    np.testing.assert_array_equal(restored.weights_, clf.weights_)
    assert restored.spec_ == clf.spec_
    assert restored.get_params()["feature_map"] == "zz"


def test_state_round_trip_keeps_text_labels() -> None:
    X, y = blobs(24, 2, 2)
    labels = np.array(["setosa", "virginica"])[y]
    clf = fitted(X, labels)
    restored = QuantumClassifier.from_state(json.loads(json.dumps(clf.to_state())))
    assert set(restored.predict(X)) <= {"setosa", "virginica"}
    np.testing.assert_array_equal(restored.predict(X), clf.predict(X))


def test_malformed_state_rejected(binary_data) -> None:
    X, y = binary_data
    state = fitted(X, y).to_state()
    with pytest.raises(ModelFormatError, match="unsupported model format"):
        QuantumClassifier.from_state({**state, "format_version": 99})
    with pytest.raises(ModelFormatError, match="do not match"):
        QuantumClassifier.from_state({**state, "weights": state["weights"][:-1]})
    with pytest.raises(ModelFormatError, match="malformed"):
        QuantumClassifier.from_state({k: v for k, v in state.items() if k != "spec"})


def test_validation_curve(three_class_data) -> None:
    X, y = three_class_data
    maxiter = 3
    clf = fitted(X[:20], y[:20], maxiter=maxiter, validation_data=(X[20:], y[20:]))
    assert len(clf.validation_accuracy_curve_) == maxiter + 1
    assert all(0.0 <= a <= 1.0 for a in clf.validation_accuracy_curve_)
    final = float(np.mean(clf.predict(X[20:]) == y[20:]))
    assert clf.validation_accuracy_curve_[-1] == pytest.approx(final)


def test_mini_batch_training(binary_data) -> None:
    X, y = binary_data
    clf = fitted(X, y, batch_size=6, maxiter=3)
    full = fitted(X, y, batch_size=None, maxiter=3)
    assert len(clf.loss_curve_) == 4
    assert not np.allclose(clf.weights_, full.weights_)
    # per step: the adjoint gradient evaluates 6 rows once (parameter shift: 2P + 1 points,
    # P the circuit's weights; the head's gradient is analytic); the final record: all 24 rows
    assert clf.gradient_ == "adjoint"
    assert clf.circuit_evaluations_ == 3 * 6 + 24
    shifted = fitted(X, y, batch_size=6, maxiter=3, gradient="parameter_shift")
    n_circuit_weights = clf.spec_.n_circuit_weights
    assert n_circuit_weights < clf.spec_.n_weights  # the default readout has a head
    assert shifted.circuit_evaluations_ == 3 * (2 * n_circuit_weights + 1) * 6 + 24


@pytest.mark.parametrize("backend", ["numpy", "aer"])
def test_exact_backends_train_identically(backend: str, binary_data) -> None:
    X, y = binary_data
    clf = fitted(X, y, backend=backend, maxiter=2)
    reference = fitted(X, y, backend="numpy", maxiter=2)
    assert clf.backend_ == backend
    np.testing.assert_allclose(clf.weights_, reference.weights_, atol=1e-8)


def test_shot_based_fit_is_reproducible(binary_data) -> None:
    X, y = binary_data
    params = {"shots": 256, "backend": "aer", "maxiter": 2, "ansatz_reps": 1}
    first = fitted(X, y, **params)
    second = fitted(X, y, **params)
    assert first.backend_ == "aer"
    assert len(first.loss_curve_) == 3
    np.testing.assert_array_equal(first.weights_, second.weights_)
    assert first.loss_curve_ == second.loss_curve_
    probabilities = first.predict_proba(X)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-12)
    assert first.__sklearn_tags__().non_deterministic


def test_default_ansatz_depth_grows_with_width() -> None:
    from qmlops.config import CircuitConfig, resolve_circuit

    # The config resolves an empty depth once the width is known, so runs record the number
    assert CircuitConfig(n_qubits=4).ansatz_reps == 2
    assert CircuitConfig().ansatz_reps is None  # width and depth wait for the data
    assert resolve_circuit(CircuitConfig(), n_features=4, n_classes=3).ansatz_reps == 2
    assert CircuitConfig(n_qubits=8).ansatz_reps == 3
    assert CircuitConfig(n_qubits=8, ansatz_reps=1).ansatz_reps == 1
    # The estimator applies the same rule in fit, to the width the data asks for
    X, y = blobs(n_features=5)
    fitted = QuantumClassifier(maxiter=1, random_state=0).fit(X, y)
    assert fitted.get_params()["ansatz_reps"] is None
    assert fitted.spec_.ansatz_reps == 3


@pytest.mark.parametrize("optimizer", ["cobyla", "adam", "lbfgs"])
def test_fast_exact_paths_train_like_aer(optimizer: str, three_class_data) -> None:
    # The numpy engine's shortcuts (cached programs, numpy encoding, unitary product, worker
    # threads) must give Aer's training run: same loss at every step, same predictions.
    X, y = three_class_data
    params = {
        "feature_map": "zz",
        "ansatz": "real_amplitudes",
        "ansatz_reps": 2,
        "optimizer": optimizer,
        "maxiter": 6,
        "learning_rate": 1.0 if optimizer == "cobyla" else 0.1,
        "batch_size": None,
    }
    reference = fitted(X, y, backend="aer", **params)
    for threads in (1, 2):
        fast = fitted(X, y, backend="numpy", simulator_threads=threads, **params)
        np.testing.assert_allclose(fast.loss_curve_, reference.loss_curve_, atol=1e-8)
        np.testing.assert_array_equal(fast.predict(X), reference.predict(X))
        np.testing.assert_allclose(fast.predict_proba(X), reference.predict_proba(X), atol=1e-8)
