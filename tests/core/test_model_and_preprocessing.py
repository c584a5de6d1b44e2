"""Preprocessing, splits, metrics and the deployable model document."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import warnings

import numpy as np
import pandas as pd
import pytest
from core_data import blobs, make_dataset
from sklearn.datasets import make_classification

from qmlops import QuantumClassifier
from qmlops.errors import ConfigurationError, DatasetError, ModelFormatError
from qmlops.metrics import METRIC_NAMES, classification_metrics, evaluate_classifier
from qmlops.model import DeployedModel, model_document
from qmlops.preprocessing import (
    AngleEncoder,
    make_preprocessor,
    preprocessor_to_state,
    split_dataset,
)


def raw_dataset(n_samples: int = 36, n_features: int = 4, n_classes: int = 3):
    X, y = make_classification(
        n_samples=n_samples,
        n_features=n_features,
        n_informative=2,
        n_redundant=0,
        n_classes=n_classes,
        n_clusters_per_class=1,
        class_sep=5,
        random_state=0,
    )
    labels = np.array(["alpha", "beta", "gamma"])[y]
    return make_dataset(X * 3.0 + 10.0, labels)


@pytest.fixture(scope="module")
def trained():
    dataset = raw_dataset()
    splits = split_dataset(dataset, test_size=0.25, random_state=0)
    preprocessor = make_preprocessor(4, 2, 2.2).fit(splits.X_train)
    clf = QuantumClassifier(maxiter=3, random_state=0, batch_size=None)
    clf.fit(preprocessor.transform(splits.X_train), splits.y_train)
    return dataset, splits, preprocessor, clf


# -- model document ---------------------------------------------------------------------


def test_model_predicts_like_its_parts(trained) -> None:
    dataset, splits, preprocessor, clf = trained
    document = json.loads(json.dumps(model_document(preprocessor, clf, dataset.feature_names)))
    model = DeployedModel(document)
    frame = pd.DataFrame(splits.X_test, columns=list(dataset.feature_names))
    expected = clf.predict(preprocessor.transform(splits.X_test))
    np.testing.assert_array_equal(model.predict(frame), expected)
    np.testing.assert_array_equal(model.predict(splits.X_test), expected)
    np.testing.assert_allclose(
        model.predict_proba(frame),
        clf.predict_proba(preprocessor.transform(splits.X_test)),
        atol=1e-12,
    )
    assert model.classes == ["alpha", "beta", "gamma"]


def test_model_selects_columns_by_name(trained) -> None:
    dataset, splits, preprocessor, clf = trained
    model = DeployedModel(model_document(preprocessor, clf, dataset.feature_names))
    frame = pd.DataFrame(splits.X_test, columns=list(dataset.feature_names))
    shuffled = frame[list(reversed(frame.columns))].assign(extra=1.0)
    np.testing.assert_array_equal(model.predict(shuffled), model.predict(frame))


def test_model_load_from_file(trained, tmp_path) -> None:
    dataset, splits, preprocessor, clf = trained
    path = tmp_path / "model.json"
    path.write_text(json.dumps(model_document(preprocessor, clf, dataset.feature_names)))
    model = DeployedModel.load(path)
    np.testing.assert_array_equal(
        model.predict(splits.X_test), clf.predict(preprocessor.transform(splits.X_test))
    )
    path.write_text("{not json")
    with pytest.raises(ModelFormatError, match="cannot read model file"):
        DeployedModel.load(path)


def test_tampered_weight_fails_integrity_check(trained) -> None:
    dataset, _, preprocessor, clf = trained
    document = copy.deepcopy(model_document(preprocessor, clf, dataset.feature_names))
    DeployedModel(copy.deepcopy(document))  # intact: loads
    document["body"]["classifier"]["weights"][0] += 1e-6
    with pytest.raises(ModelFormatError, match="integrity check"):
        DeployedModel(document)


def test_tampered_preprocessor_fails_integrity_check(trained) -> None:
    dataset, _, preprocessor, clf = trained
    document = copy.deepcopy(model_document(preprocessor, clf, dataset.feature_names))
    document["body"]["preprocessor"]["mean"][1] = 0.0
    with pytest.raises(ModelFormatError, match="integrity check"):
        DeployedModel(document)


def test_not_a_model_document() -> None:
    with pytest.raises(ModelFormatError, match="not a qmlops model document"):
        DeployedModel({"weights": [1, 2]})


def test_missing_feature_columns(trained) -> None:
    dataset, splits, preprocessor, clf = trained
    model = DeployedModel(model_document(preprocessor, clf, dataset.feature_names))
    frame = pd.DataFrame(splits.X_test, columns=list(dataset.feature_names))
    with pytest.raises(DatasetError, match=r"lacks the model's feature columns \['f2'\]"):
        model.predict(frame.drop(columns=["f2"]))


def test_wrong_width_and_nan_rows_rejected(trained) -> None:
    dataset, splits, preprocessor, clf = trained
    model = DeployedModel(model_document(preprocessor, clf, dataset.feature_names))
    with pytest.raises(DatasetError, match="expected 4 feature columns"):
        model.predict(splits.X_test[:, :3])
    bad = splits.X_test.copy()
    bad[0, 0] = np.nan
    with pytest.raises(DatasetError, match="NaN or infinite"):
        model.predict(bad)


# -- preprocessing ----------------------------------------------------------------------


def test_angle_encoder_matches_pipeline_with_pca(trained) -> None:
    _, splits, preprocessor, _ = trained
    assert "reduce" in preprocessor.named_steps
    encoder = AngleEncoder(json.loads(json.dumps(preprocessor_to_state(preprocessor))))
    assert encoder.n_features_in == 4
    for X in (splits.X_train, splits.X_test):
        np.testing.assert_allclose(encoder.transform(X), preprocessor.transform(X), atol=1e-12)
    assert preprocessor.transform(splits.X_train).shape == (splits.X_train.shape[0], 2)


def test_angle_encoder_matches_pipeline_without_pca() -> None:
    X, _ = blobs(20, 3, 2)
    preprocessor = make_preprocessor(3, 3, 1.5).fit(X[:15])
    assert "reduce" not in preprocessor.named_steps
    state = preprocessor_to_state(preprocessor)
    assert state["pca_mean"] is None
    assert state["pca_components"] is None
    np.testing.assert_allclose(
        AngleEncoder(state).transform(X[15:]), preprocessor.transform(X[15:]), atol=1e-12
    )


def test_preprocessor_fitted_on_training_data_only(trained) -> None:
    _, splits, preprocessor, _ = trained
    state = preprocessor_to_state(preprocessor)
    np.testing.assert_allclose(state["mean"], splits.X_train.mean(axis=0), atol=1e-12)
    angles = preprocessor.transform(splits.X_train)
    np.testing.assert_allclose(angles.min(axis=0), 0.0, atol=1e-12)
    np.testing.assert_allclose(angles.max(axis=0), 2.2, atol=1e-12)
    everything = np.vstack([splits.X_train, splits.X_test])
    assert not np.allclose(state["mean"], everything.mean(axis=0))


def test_more_qubits_than_features_rejected() -> None:
    with pytest.raises(ConfigurationError, match="n_qubits=5 exceeds the 3 features"):
        make_preprocessor(3, 5, 2.2)


def test_malformed_encoder_state_rejected() -> None:
    with pytest.raises(ModelFormatError, match="malformed preprocessor state"):
        AngleEncoder({"mean": [0.0]})


# -- splits -----------------------------------------------------------------------------


def test_split_is_stratified_with_validation() -> None:
    dataset = raw_dataset(n_samples=45)
    splits = split_dataset(dataset, test_size=0.2, validation_size=0.25, random_state=0)
    assert splits.X_val is not None
    assert splits.y_val is not None
    classes = set(np.unique(dataset.labels))
    for labels in (splits.y_train, splits.y_test, splits.y_val):
        assert set(np.unique(labels)) == classes
    sizes = splits.y_train.shape[0] + splits.y_test.shape[0] + splits.y_val.shape[0]
    assert sizes == 45
    assert splits.X_train.shape[0] == splits.y_train.shape[0]
    assert splits.X_test.shape == (splits.y_test.shape[0], 4)
    # every sample lands in exactly one part
    rows = np.vstack([splits.X_train, splits.X_test, splits.X_val])
    np.testing.assert_array_equal(np.sort(rows, axis=0), np.sort(dataset.features, axis=0))


def test_split_without_validation() -> None:
    splits = split_dataset(raw_dataset(), test_size=0.25)
    assert splits.X_val is None
    assert splits.y_val is None
    assert splits.y_test.shape[0] == 9


def test_split_is_deterministic_per_random_state() -> None:
    dataset = raw_dataset()
    first = split_dataset(dataset, test_size=0.25, validation_size=0.2, random_state=3)
    again = split_dataset(dataset, test_size=0.25, validation_size=0.2, random_state=3)
    other = split_dataset(dataset, test_size=0.25, validation_size=0.2, random_state=4)
    for name in ("X_train", "y_train", "X_test", "y_test", "X_val", "y_val"):
        np.testing.assert_array_equal(getattr(first, name), getattr(again, name))
    assert not np.array_equal(first.X_test, other.X_test)


# -- metrics ----------------------------------------------------------------------------


def test_binary_metrics() -> None:
    classes = np.array(["no", "yes"])
    y_true = np.array(["no", "no", "yes", "yes"])
    probabilities = np.array([[0.9, 0.1], [0.4, 0.6], [0.3, 0.7], [0.2, 0.8]])
    y_pred = classes[probabilities.argmax(axis=1)]
    metrics = classification_metrics(y_true, y_pred, probabilities, classes)
    assert set(metrics) == set(METRIC_NAMES)
    assert metrics["accuracy"] == pytest.approx(0.75)
    assert metrics["balanced_accuracy"] == pytest.approx(0.75)
    assert metrics["f1_macro"] == pytest.approx((2 / 3 + 0.8) / 2)
    assert metrics["roc_auc"] == pytest.approx(1.0)


def test_three_class_metrics() -> None:
    classes = np.array([0, 1, 2])
    y_true = np.array([0, 1, 2, 0, 1, 2])
    probabilities = np.array(
        [
            [0.8, 0.1, 0.1],
            [0.1, 0.8, 0.1],
            [0.1, 0.1, 0.8],
            [0.6, 0.3, 0.1],
            [0.2, 0.7, 0.1],
            [0.5, 0.1, 0.4],
        ]
    )
    y_pred = classes[probabilities.argmax(axis=1)]
    metrics = classification_metrics(y_true, y_pred, probabilities, classes)
    assert set(metrics) == set(METRIC_NAMES)
    assert metrics["accuracy"] == pytest.approx(5 / 6)
    assert metrics["balanced_accuracy"] == pytest.approx(5 / 6)
    assert 0.0 < metrics["f1_macro"] < 1.0
    assert 0.5 < metrics["roc_auc"] <= 1.0


def test_roc_auc_nan_when_test_lacks_a_class() -> None:
    classes = np.array([0, 1])
    y_true = np.array([1, 1, 1])
    probabilities = np.array([[0.2, 0.8], [0.6, 0.4], [0.1, 0.9]])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn warns about the undefined AUC
        metrics = classification_metrics(y_true, np.array([1, 0, 1]), probabilities, classes)
    assert np.isnan(metrics["roc_auc"])
    assert metrics["accuracy"] == pytest.approx(2 / 3)


def test_evaluate_classifier(trained) -> None:
    _, splits, preprocessor, clf = trained
    report = evaluate_classifier(clf, preprocessor.transform(splits.X_test), splits.y_test)
    assert report["labels"] == ["alpha", "beta", "gamma"]
    matrix = np.array(report["confusion_matrix"])
    assert matrix.shape == (3, 3)
    assert matrix.sum() == splits.y_test.shape[0]
    assert np.trace(matrix) / matrix.sum() == pytest.approx(report["metrics"]["accuracy"])


# -- package boundaries -----------------------------------------------------------------


def test_core_imports_neither_prefect_nor_mlflow() -> None:
    code = (
        "import qmlops, qmlops.model, qmlops.simulation, qmlops.data, qmlops.plots, sys; "
        "assert not any(m.split('.')[0] in ('prefect', 'mlflow') for m in sys.modules), "
        "sorted(m for m in sys.modules if m.split('.')[0] in ('prefect', 'mlflow'))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr


# -- figures ----------------------------------------------------------------------------


def test_circuit_diagram_is_drawn_once_per_circuit_description() -> None:
    from qmlops import plots
    from qmlops.circuits import CircuitSpec

    spec = CircuitSpec(n_qubits=2, n_classes=2, ansatz_reps=1)
    first = plots.circuit_png(spec)
    assert first.startswith(b"\x89PNG\r\n\x1a\n")
    assert plots.circuit_png(CircuitSpec(n_qubits=2, n_classes=2, ansatz_reps=1)) is first
    other = plots.circuit_png(CircuitSpec(n_qubits=2, n_classes=2, ansatz_reps=2))
    assert other != first


def test_png_renders_without_registering_figures_in_pyplot() -> None:
    import matplotlib.pyplot as plt

    from qmlops import plots
    from qmlops.circuits import CircuitSpec

    open_before = set(plt.get_fignums())
    circuit = plots.circuit_figure(CircuitSpec(n_qubits=2, n_classes=2, ansatz_reps=1).circuit())
    assert set(plt.get_fignums()) == open_before  # Qiskit drew on our Axes, not through pyplot
    image = plots.png(circuit, tight=True)
    assert image.startswith(b"\x89PNG\r\n\x1a\n")
    curves = plots.png(plots.training_curves_figure([1.0, 0.5], [0.5, 0.75], [0.5, 0.7]))
    assert curves.startswith(b"\x89PNG\r\n\x1a\n")
    assert set(plt.get_fignums()) == open_before


def test_the_figures_leave_the_process_matplotlib_backend_alone() -> None:
    # Given a process that chose its own backend, when it imports and draws every figure
    script = """
import matplotlib
matplotlib.use("svg")
from qmlops import plots, sweep_report
from qmlops.circuits import CircuitSpec
assert plots.circuit_png(CircuitSpec(n_qubits=2, n_classes=2)).startswith(b"\\x89PNG")
outcomes = [sweep_report.outcome("c000", {}, loss_curve=[1.0, 0.5])]
plots.png(sweep_report.loss_curves_figure(outcomes))
print(matplotlib.get_backend())
"""
    completed = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    # Then its backend is still the one it chose
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert completed.stdout.strip() == "svg"


def test_figures_render_from_many_threads_at_once() -> None:
    from concurrent.futures import ThreadPoolExecutor

    import matplotlib.pyplot as plt

    from qmlops import plots
    from qmlops.circuits import CircuitSpec

    def render(k: int) -> list[bytes]:
        spec = CircuitSpec(n_qubits=2, n_classes=2, ansatz_reps=1)
        return [
            plots.png(plots.training_curves_figure([1.0, 0.5 / (k + 1)], [0.5, 0.75], [])),
            plots.png(plots.confusion_matrix_figure([[k, 1], [2, 3]], ["a", "b"])),
            plots.png(plots.circuit_figure(spec.circuit()), tight=True),
        ]

    open_before = set(plt.get_fignums())
    with ThreadPoolExecutor(4) as pool:
        images = [image for batch in pool.map(render, range(8)) for image in batch]
    assert len(images) == 24
    assert all(image.startswith(b"\x89PNG\r\n\x1a\n") for image in images)
    assert set(plt.get_fignums()) == open_before
