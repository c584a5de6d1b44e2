"""Adam's gradient (adjoint and parameter shift), taken from a real fit, equals finite differences.

The gradient is read back from the training itself: after one Adam step the checkpoint holds
the first moment ``(1 - beta1) * g`` and the second ``(1 - beta2) * g**2`` (moments start at
zero), so ``g`` is exactly what the training code computed, with nothing re-derived here. The
finite difference is taken on the same mini-batch the step used (seen by wrapping the
evaluator) with an independent evaluator, at the fit's initial weights, the ``z_softmax``
readout's head weights included.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from core_data import blobs

from qmlops.checkpoint import CheckpointStore
from qmlops.circuits import CircuitSpec
from qmlops.classifier import QuantumClassifier
from qmlops.simulation import CircuitEvaluator

BETA1, BETA2 = 0.9, 0.999  # Adam's standard moment decays
BATCH = 8


def _finite_difference_gradient(
    spec: CircuitSpec, features: np.ndarray, targets: np.ndarray, weights: np.ndarray
) -> np.ndarray:
    """Central differences of the mean cross-entropy, all points in one evaluator call."""
    step = 1e-5
    shifts = np.eye(weights.shape[0]) * step
    points = np.concatenate([weights + shifts, weights - shifts])
    evaluator = CircuitEvaluator(spec, backend="numpy")
    probabilities = evaluator.class_probabilities([(features, points)])[0]
    picked = probabilities[:, np.arange(targets.shape[0]), targets]
    losses = -np.log(picked).mean(axis=1)
    n_weights = weights.shape[0]
    return (losses[:n_weights] - losses[n_weights:]) / (2 * step)


@pytest.mark.parametrize("readout", ["hamming_weight", "z_softmax", "zz_softmax"])
@pytest.mark.parametrize("gradient", ["adjoint", "parameter_shift"])
@pytest.mark.parametrize("ansatz", ["real_amplitudes", "efficient_su2"])
def test_adam_gradient_of_a_real_fit_equals_finite_differences(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ansatz: str, gradient: str, readout: str
) -> None:
    # Given three classes on two qubits and a mini-batch smaller than the data
    X, y = blobs(30, 2, 3)
    requests: list[tuple] = []
    original = CircuitEvaluator.class_probabilities
    original_values = CircuitEvaluator.readout_values
    original_adjoint = CircuitEvaluator.loss_gradient

    def recording(self: CircuitEvaluator, batch):  # type: ignore[no-untyped-def]
        requests.extend(batch)
        return original(self, batch)

    def recording_values(self: CircuitEvaluator, batch):  # type: ignore[no-untyped-def]
        requests.extend(batch)  # parameter shift: circuit weight points only
        return original_values(self, batch)

    def recording_adjoint(self, features, weights, cotangent, rows=None, requests_=()):  # type: ignore[no-untyped-def]
        requests.append((features, weights[None, :], rows))
        return original_adjoint(self, features, weights, cotangent, rows, requests_)

    monkeypatch.setattr(CircuitEvaluator, "class_probabilities", recording)
    monkeypatch.setattr(CircuitEvaluator, "readout_values", recording_values)
    monkeypatch.setattr(CircuitEvaluator, "loss_gradient", recording_adjoint)
    store = CheckpointStore(tmp_path, "gradient", every=1)

    # When one Adam step runs through the classifier
    clf = QuantumClassifier(
        ansatz=ansatz,
        ansatz_reps=2,
        optimizer="adam",
        maxiter=1,
        batch_size=BATCH,
        backend="numpy",
        gradient=gradient,
        readout=readout,
        random_state=5,
    ).fit(X, y, checkpoint=store)
    assert clf.gradient_ == gradient

    # Then the gradient it used equals the finite-difference gradient on that mini-batch
    features, points, rows = requests[0]
    assert len(rows) == BATCH  # a real mini-batch, not the whole training set
    np.testing.assert_array_equal(points[0], clf.initial_weights_[: points.shape[1]])
    snapshot = store.load_latest()
    assert snapshot is not None
    assert snapshot.iteration == 1
    first = np.asarray(snapshot.state["moments"]["first"])
    second = np.asarray(snapshot.state["moments"]["second"])
    gradient = first / (1 - BETA1)
    targets = np.searchsorted(clf.classes_, y)[rows]
    expected = _finite_difference_gradient(clf.spec_, features[rows], targets, clf.initial_weights_)
    assert gradient.shape == (clf.spec_.n_weights,)
    assert clf.spec_.n_classes == 3
    assert np.max(np.abs(expected)) > 1e-2  # a gradient worth comparing
    np.testing.assert_allclose(gradient, expected, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(second, (1 - BETA2) * gradient**2, rtol=1e-9, atol=1e-15)
