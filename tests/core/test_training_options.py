"""Training options: early stopping, learning-rate schedules, class weights and L-BFGS."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from core_data import blobs

from qmlops import QuantumClassifier
from qmlops.checkpoint import CheckpointStore
from qmlops.circuits import CircuitSpec
from qmlops.classifier import _held_out
from qmlops.errors import ConfigurationError
from qmlops.simulation import CircuitEvaluator
from qmlops.training import (
    Objective,
    class_weights,
    cross_entropy,
    scheduled_learning_rate,
)


def fitted(X, y, validation_data=None, **params) -> QuantumClassifier:
    settings = {"maxiter": 3, "random_state": 0, "batch_size": None, "ansatz_reps": 1, **params}
    return QuantumClassifier(**settings).fit(X, y, validation_data)


def noisy_blobs(n_samples: int, random_state: int = 0):
    """Overlapping classes: the validation loss stops improving long before ``maxiter``."""
    X, y = blobs(n_samples, 2, 2, random_state)
    flipped = np.random.default_rng(random_state).random(n_samples) < 0.2
    return X, np.where(flipped, 1 - y, y)


# -- learning-rate schedules ----------------------------------------------------------------


def test_schedules_give_the_documented_learning_rates() -> None:
    lr, maxiter = 0.2, 10
    rates = {
        name: [scheduled_learning_rate(name, lr, t, maxiter) for t in range(1, maxiter + 1)]
        for name in ("constant", "cosine", "exponential")
    }
    assert rates["constant"] == [lr] * maxiter
    # Every schedule starts at the full rate; the decaying ones head for a tenth of it.
    assert rates["cosine"][0] == rates["exponential"][0] == lr
    assert rates["cosine"][5] == pytest.approx(lr * 0.55)  # halfway: the cosine's midpoint
    assert rates["exponential"][5] == pytest.approx(lr * 0.1**0.5)
    assert rates["exponential"][-1] == pytest.approx(lr * 0.1**0.9)
    for name in ("cosine", "exponential"):
        assert all(a > b for a, b in zip(rates[name], rates[name][1:], strict=False))
        assert rates[name][-1] > lr * 0.1
    # The default is the step size Adam used before schedules were options, bit for bit.
    old = [lr * (0.1 + 0.45 * (1 + np.cos(np.pi * (t - 1) / maxiter))) for t in range(1, 11)]
    assert rates["cosine"] == old


@pytest.mark.parametrize("schedule", ["constant", "cosine", "exponential"])
def test_adam_steps_with_the_chosen_schedule(schedule: str, monkeypatch, binary_data) -> None:
    import qmlops.training

    used = []
    original = qmlops.training.scheduled_learning_rate

    def spy(name: str, learning_rate: float, iteration: int, maxiter: int) -> float:
        used.append((name, iteration, maxiter))
        return original(name, learning_rate, iteration, maxiter)

    monkeypatch.setattr(qmlops.training, "scheduled_learning_rate", spy)
    X, y = binary_data
    fitted(X, y, maxiter=4, learning_rate_schedule=schedule)
    assert used == [(schedule, t, 4) for t in range(1, 5)]


def test_schedules_change_the_trained_weights(binary_data) -> None:
    X, y = binary_data
    weights = [
        fitted(X, y, maxiter=4, learning_rate_schedule=name).weights_
        for name in ("constant", "cosine", "exponential")
    ]
    assert not np.allclose(weights[0], weights[1])
    assert not np.allclose(weights[1], weights[2])


# -- class weights ------------------------------------------------------------------------


def test_balanced_class_weights_follow_scikit_learn() -> None:
    from sklearn.utils.class_weight import compute_class_weight

    targets = np.array([0, 0, 0, 1, 2, 2])
    expected = compute_class_weight("balanced", classes=np.arange(3), y=targets)
    np.testing.assert_allclose(class_weights("balanced", targets, 3), expected)
    np.testing.assert_array_equal(class_weights(None, targets, 3), np.ones(3))
    # Every class contributes the same total weight; all weights sum to n_samples.
    weights = class_weights("balanced", targets, 3)[targets]
    assert weights.sum() == pytest.approx(targets.shape[0])
    with pytest.raises(ConfigurationError, match="class_weight"):
        class_weights("inverse", targets, 3)


def _weighted_setup(batch_size: int | None, readout: str = "hamming_weight", reuploads: int = 1):
    spec = CircuitSpec(
        n_qubits=2,
        n_classes=3,
        feature_map="zz",
        ansatz="efficient_su2",
        readout=readout,
        reuploads=reuploads,
    )
    rng = np.random.default_rng(5)
    X = rng.uniform(0.0, 2.2, (10, 2))
    y = np.array([0, 0, 0, 0, 0, 0, 1, 1, 2, 0])  # imbalanced: weights far from 1
    w = rng.uniform(-np.pi, np.pi, spec.n_weights)
    evaluator = CircuitEvaluator(spec, backend="numpy")
    weights = class_weights("balanced", y, 3)
    objective = Objective(
        evaluator, X, y, batch_size=batch_size, rng=np.random.default_rng(1), class_weights=weights
    )
    objective.next_batch()
    rows = np.arange(10) if objective.rows is None else objective.rows
    targets = y[rows]

    def loss(point: np.ndarray) -> float:
        probabilities = evaluator.class_probabilities([(X[rows], point[None])])[0]
        return float(cross_entropy(probabilities, targets, weights[targets])[0])

    h = 1e-5
    eye = np.eye(spec.n_weights)
    finite_difference = np.array(
        [(loss(w + h * eye[j]) - loss(w - h * eye[j])) / (2 * h) for j in range(spec.n_weights)]
    )
    return objective, w, finite_difference, loss


@pytest.mark.parametrize(
    ("batch_size", "readout", "reuploads"),
    [(None, "hamming_weight", 1), (6, "hamming_weight", 1), (6, "z_softmax", 2)],
)
def test_class_weighted_gradients_match_finite_differences(
    batch_size: int | None, readout: str, reuploads: int
) -> None:
    objective, w, finite_difference, loss = _weighted_setup(batch_size, readout, reuploads)
    adjoint, adjoint_record = objective.loss_gradient(w)
    shifted, shifted_record = objective.parameter_shift_gradient(w)

    assert np.max(np.abs(finite_difference)) > 1e-3  # a non-trivial gradient
    np.testing.assert_allclose(adjoint, finite_difference, atol=1e-6)
    np.testing.assert_allclose(shifted, finite_difference, atol=1e-6)
    assert adjoint_record.loss == pytest.approx(loss(w), abs=1e-12)
    assert shifted_record.loss == pytest.approx(loss(w), abs=1e-12)
    # The weights matter: the unweighted gradient is a different vector.
    objective.class_weights = None
    unweighted, _ = objective.loss_gradient(w)
    assert np.max(np.abs(unweighted - adjoint)) > 1e-3


def test_class_weight_is_used_in_training(binary_data) -> None:
    X, y = blobs(20, 2, 2)
    imbalanced = np.concatenate([np.flatnonzero(y == 0), np.flatnonzero(y == 1)[:4]])
    X, y = X[imbalanced], y[imbalanced]
    plain = fitted(X, y, maxiter=2)
    balanced = fitted(X, y, maxiter=2, class_weight="balanced")
    np.testing.assert_allclose(balanced.class_weight_, [14 / 20, 14 / 8])
    np.testing.assert_array_equal(plain.class_weight_, [1.0, 1.0])
    assert not np.allclose(plain.weights_, balanced.weights_)
    by_label = fitted(X, y, maxiter=2, class_weight={1: 14 / 8, 0: 14 / 20})
    np.testing.assert_array_equal(by_label.weights_, balanced.weights_)


# -- early stopping ---------------------------------------------------------------------


def _validation_loss(clf: QuantumClassifier, X_val, y_val) -> float:
    targets = np.searchsorted(clf.classes_, y_val)
    return float(cross_entropy(clf.predict_proba(X_val)[None], targets)[0])


@pytest.mark.parametrize("optimizer", ["adam", "spsa", "lbfgs"])
def test_early_stopping_stops_and_keeps_the_best_weights(optimizer: str) -> None:
    X, y = noisy_blobs(40)
    X_val, y_val = noisy_blobs(20, random_state=1)
    params = {"optimizer": optimizer, "maxiter": 80, "learning_rate": 0.3}
    params |= {"early_stopping": True, "n_iter_no_change": 3, "tol": 0.0}
    clf = fitted(X, y, (X_val, y_val), **params)

    # It stopped n_iter_no_change iterations after the best one, well before maxiter ...
    assert clf.stopped_early_
    assert clf.n_iter_ < 80
    assert clf.n_iter_ - clf.best_iteration_ == 3
    curve = clf.validation_loss_curve_
    measured = curve[: clf.n_iter_ + 1]
    assert clf.best_iteration_ == int(np.argmin(measured))
    assert clf.best_validation_loss_ == min(measured)
    # ... and kept the best weights: measured once more, last in the curves.
    assert len(curve) == len(clf.loss_curve_) == clf.n_iter_ + 2
    assert curve[-1] == pytest.approx(clf.best_validation_loss_, abs=1e-12)
    assert _validation_loss(clf, X_val, y_val) == pytest.approx(clf.best_validation_loss_)
    # Deterministic with a seed.
    again = fitted(X, y, (X_val, y_val), **params)
    np.testing.assert_array_equal(again.weights_, clf.weights_)
    assert again.best_iteration_ == clf.best_iteration_


def test_without_improvement_tolerance_met_it_stops_at_once(binary_data) -> None:
    X, y = binary_data
    clf = fitted(X, y, (X, y), maxiter=30, early_stopping=True, n_iter_no_change=2, tol=10.0)
    assert (clf.best_iteration_, clf.n_iter_) == (0, 2)
    np.testing.assert_array_equal(clf.weights_, clf.initial_weights_)


def test_early_stopping_off_changes_nothing(binary_data) -> None:
    X, y = binary_data
    plain = fitted(X, y, (X, y), maxiter=4)
    assert plain.best_iteration_ is None
    assert not plain.stopped_early_
    assert plain.n_iter_ == 4
    assert len(plain.loss_curve_) == 5


def test_early_stopping_holds_out_a_stratified_seeded_split() -> None:
    X, y = blobs(40, 2, 2)
    targets = np.concatenate([np.zeros(30, dtype=int), np.ones(10, dtype=int)])
    X_train, y_train, (X_val, y_val) = _held_out(X, targets, 0.2, seed=7)
    assert (len(y_train), len(y_val)) == (32, 8)
    assert np.bincount(y_val).tolist() == [6, 2]  # the classes' shares, 3 : 1
    again = _held_out(X, targets, 0.2, seed=7)
    np.testing.assert_array_equal(again[2][0], X_val)
    # Without validation data, fit monitors the held-out part and trains on the rest.
    clf = fitted(X, y, maxiter=3, early_stopping=True, validation_fraction=0.25)
    assert len(clf.validation_loss_curve_) >= clf.n_iter_ + 1
    assert clf.circuit_evaluations_ == 3 * 30 + 30 + 4 * 10 + (30 + 10) * (clf.n_iter_ < 3)


def _fit_interrupted(
    X: np.ndarray, y: np.ndarray, params: dict, directory: Path, at_iteration: int
) -> CheckpointStore:
    """Fit with a checkpoint every 2 iterations until a callback raises at ``at_iteration``.

    Returns:
        The checkpoint store, for a fit that resumes from it.
    """

    class Interrupted(Exception):
        pass

    def interrupt(record) -> None:
        if record.iteration == at_iteration:
            raise Interrupted

    store = CheckpointStore(directory, "job", every=2)
    with pytest.raises(Interrupted):
        QuantumClassifier(**params, callback=interrupt).fit(X, y, checkpoint=store)
    return store


def test_early_stopping_resumes_from_a_checkpoint_exactly(tmp_path: Path) -> None:
    X, y = noisy_blobs(40)
    params = {"maxiter": 40, "learning_rate": 0.3, "batch_size": 8, "random_state": 3}
    params |= {"early_stopping": True, "n_iter_no_change": 4, "tol": 0.0, "ansatz_reps": 1}
    # The iterations below are this circuit's trajectory: the parity readout, one upload.
    params |= {"readout": "hamming_weight", "reuploads": 1}
    reference = QuantumClassifier(**params).fit(X, y)
    # The snapshot at iteration 8 comes after the best iteration (6): the resumed run must
    # know that best from the snapshot to stop where the uninterrupted one stopped.
    assert reference.stopped_early_
    assert (reference.best_iteration_, reference.n_iter_) == (6, 10)
    store = _fit_interrupted(X, y, params, tmp_path, at_iteration=9)
    resumed = QuantumClassifier(**params).fit(X, y, checkpoint=store)
    assert resumed.resumed_from_ == 8
    np.testing.assert_array_equal(resumed.weights_, reference.weights_)
    assert resumed.loss_curve_ == reference.loss_curve_
    assert resumed.best_iteration_ == reference.best_iteration_


# -- L-BFGS ----------------------------------------------------------------------------


def _count_calls(monkeypatch) -> dict[str, list[int]]:
    # Parameter shift reads the readout values (its points are the circuit's weights only).
    calls: dict[str, list[int]] = {"loss_gradient": [], "class_probabilities": []}
    adjoint = CircuitEvaluator.loss_gradient
    probabilities = CircuitEvaluator.class_probabilities
    values = CircuitEvaluator.readout_values

    def counted_adjoint(self, features, weights, *args, **kwargs):
        calls["loss_gradient"].append(1)
        return adjoint(self, features, weights, *args, **kwargs)

    def counted_probabilities(self, requests):
        calls["class_probabilities"].append(len(requests[0][1]))
        return probabilities(self, requests)

    def counted_values(self, requests):
        calls["class_probabilities"].append(len(requests[0][1]))
        return values(self, requests)

    monkeypatch.setattr(CircuitEvaluator, "loss_gradient", counted_adjoint)
    monkeypatch.setattr(CircuitEvaluator, "class_probabilities", counted_probabilities)
    monkeypatch.setattr(CircuitEvaluator, "readout_values", counted_values)
    return calls


def test_lbfgs_converges_with_one_adjoint_call_per_evaluation(monkeypatch) -> None:
    X, y = blobs(24, 2, 2)
    calls = _count_calls(monkeypatch)
    clf = fitted(X, y, optimizer="lbfgs", maxiter=30)
    assert clf.gradient_ == "adjoint"
    assert clf.loss_curve_[-1] < 0.5 * clf.loss_curve_[0]
    assert clf.score(X, y) == 1.0
    # Record k measures the iterate after k iterations; every evaluation is one batched call.
    assert len(clf.loss_curve_) == clf.n_iter_ + 1
    evaluations = len(calls["loss_gradient"])
    assert calls["class_probabilities"] == [1]  # the score above (one point); none in fit
    assert clf.primitive_calls_ == evaluations
    assert clf.n_iter_ + 1 <= evaluations <= 3 * clf.n_iter_ + 1
    assert clf.circuit_evaluations_ == evaluations * X.shape[0]


def test_lbfgs_parameter_shift_path_is_one_call_per_evaluation(monkeypatch, binary_data) -> None:
    X, y = binary_data
    adjoint = fitted(X, y, optimizer="lbfgs", maxiter=5)
    calls = _count_calls(monkeypatch)
    shifted = fitted(X, y, optimizer="lbfgs", maxiter=5, gradient="parameter_shift")
    n_points = 2 * shifted.spec_.n_circuit_weights + 1
    assert calls["loss_gradient"] == []
    assert calls["class_probabilities"] == [n_points] * shifted.primitive_calls_
    # The same exact gradient: the same iterates.
    np.testing.assert_allclose(shifted.weights_, adjoint.weights_, atol=1e-8)
    np.testing.assert_allclose(shifted.loss_curve_, adjoint.loss_curve_, atol=1e-10)


def test_lbfgs_size_guard_bounds_its_work(binary_data) -> None:
    X, y = binary_data
    for gradient in ("adjoint", "parameter_shift"):
        clf = QuantumClassifier(optimizer="lbfgs", maxiter=4, random_state=0, gradient=gradient)
        _, estimate = clf.plan(X.shape[0], 0, X.shape[1], 2)
        clf.set_params(max_circuit_evaluations=estimate.circuit_evaluations).fit(X, y)
        assert 0 < clf.circuit_evaluations_ <= estimate.circuit_evaluations


def test_lbfgs_resumes_from_the_saved_weights(tmp_path: Path) -> None:
    X, y = noisy_blobs(30)
    params = {"optimizer": "lbfgs", "maxiter": 8, "random_state": 3, "ansatz_reps": 1}
    store = _fit_interrupted(X, y, params, tmp_path, at_iteration=5)
    saved = store.load_latest()
    assert saved is not None
    assert saved.iteration == 4
    resumed = QuantumClassifier(**params).fit(X, y, checkpoint=store)
    assert resumed.resumed_from_ == 4
    assert resumed.loss_curve_[:5] == [record["loss"] for record in saved.log]
    assert resumed.n_iter_ <= 8
    assert resumed.loss_curve_[-1] <= resumed.loss_curve_[4]


# -- configuration -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"optimizer": "lbfgs", "shots": 100}, "lbfgs"),
        ({"learning_rate_schedule": "step"}, "learning_rate_schedule"),
        ({"class_weight": "inverse"}, "class_weight"),
        ({"class_weight": {0: -1.0}}, "class_weight"),
        ({"early_stopping": "yes"}, "early_stopping"),
        ({"early_stopping": True, "optimizer": "cobyla"}, "early_stopping"),
        ({"validation_fraction": 0.0}, "validation_fraction"),
        ({"validation_fraction": 1.0}, "validation_fraction"),
        ({"n_iter_no_change": 0}, "n_iter_no_change"),
        ({"tol": -1.0}, "tol"),
        ({"tol": float("nan")}, "tol"),
        ({"early_stopping": True, "validation_fraction": 0.01}, "validation_fraction"),
    ],
)
def test_bad_values_are_refused_before_any_circuit_runs(params, match, monkeypatch) -> None:
    def no_circuits(*args, **kwargs):
        raise AssertionError("a circuit was built")

    monkeypatch.setattr(CircuitEvaluator, "__init__", no_circuits)
    X, y = blobs(24, 2, 2)
    with pytest.raises(ConfigurationError, match=match):
        QuantumClassifier(random_state=0, **params).fit(X, y)


def test_device_training_refuses_lbfgs() -> None:
    from qmlops.noisy import DeviceClassifier

    with pytest.raises(ConfigurationError, match="lbfgs"):
        DeviceClassifier(device="noise:depolarizing", optimizer="lbfgs").plan(24, 0, 2, 2)


def test_new_options_round_trip_through_the_state(binary_data) -> None:
    X, y = binary_data
    options = {
        "optimizer": "lbfgs",
        "learning_rate_schedule": "exponential",
        "early_stopping": True,
        "validation_fraction": 0.25,
        "n_iter_no_change": 4,
        "tol": 0.01,
        "class_weight": "balanced",
    }
    clf = fitted(X, y, **options)
    restored = QuantumClassifier.from_state(json.loads(json.dumps(clf.to_state())))
    assert {key: restored.get_params()[key] for key in options} == options
    np.testing.assert_array_equal(restored.predict_proba(X), clf.predict_proba(X))
