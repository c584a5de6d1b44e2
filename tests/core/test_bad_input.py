"""Every kind of bad input is refused with a typed error that names the problem."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from core_data import blobs, make_dataset
from pydantic import ValidationError

from qmlops import QuantumClassifier
from qmlops.circuits import CircuitSpec
from qmlops.config import ORCHESTRATION_FIELDS, CircuitConfig, DatasetConfig, TrainingConfig
from qmlops.data import load_builtin, load_dataset, load_file
from qmlops.errors import (
    ConfigurationError,
    DatasetError,
    InputError,
    ModelFormatError,
    SizeLimitError,
)
from qmlops.preprocessing import split_dataset
from qmlops.simulation import CircuitEvaluator


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_error_hierarchy() -> None:
    for error in (DatasetError, ConfigurationError, SizeLimitError, ModelFormatError):
        assert issubclass(error, InputError)
    assert issubclass(InputError, ValueError)


# -- datasets ---------------------------------------------------------------------------


def test_unknown_builtin_dataset() -> None:
    with pytest.raises(DatasetError, match="unknown dataset 'nope'"):
        load_builtin("nope")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="not found"):
        load_file(tmp_path / "x.csv", "y")


def test_unsupported_file_type(tmp_path: Path) -> None:
    path = write(tmp_path / "data.txt", "a,y\n1,0\n2,1\n")
    with pytest.raises(DatasetError, match="unsupported data file type"):
        load_file(path, "y")


def test_missing_target_column(tmp_path: Path) -> None:
    path = write(tmp_path / "d.csv", "a,b,label\n1,2,0\n3,4,1\n")
    with pytest.raises(DatasetError, match="target column 'y' not found"):
        load_file(path, "y")


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.csv"
    path.write_bytes(b"")
    with pytest.raises(DatasetError, match="empty"):
        load_file(path, "y")


def test_header_only_file(tmp_path: Path) -> None:
    path = write(tmp_path / "d.csv", "a,b,y\n")
    with pytest.raises(DatasetError, match="no rows"):
        load_file(path, "y")


def test_ragged_rows(tmp_path: Path) -> None:
    path = write(tmp_path / "d.csv", "a,b,y\n1,2,0\n3,4,1,9\n5,6,1\n")
    with pytest.raises(DatasetError, match="ragged rows.*line 3 has 4 fields"):
        load_file(path, "y")


def test_non_numeric_feature_column(tmp_path: Path) -> None:
    path = write(tmp_path / "d.csv", "a,b,y\n1,red,0\n3,blue,1\n")
    with pytest.raises(DatasetError, match=r"non-numeric feature columns.*\['b'\]"):
        load_file(path, "y")


def test_nan_values(tmp_path: Path) -> None:
    path = write(tmp_path / "d.csv", "a,b,y\n1,nan,0\n3,4,1\n")
    with pytest.raises(DatasetError, match=r"NaN or infinite values in feature columns \['b'\]"):
        load_file(path, "y")


def test_infinite_values(tmp_path: Path) -> None:
    path = write(tmp_path / "d.csv", "a,b,y\ninf,2,0\n3,4,1\n")
    with pytest.raises(DatasetError, match=r"NaN or infinite values in feature columns \['a'\]"):
        load_file(path, "y")


def test_missing_labels(tmp_path: Path) -> None:
    path = write(tmp_path / "d.csv", "a,b,y\n1,2,\n3,4,1\n")
    with pytest.raises(DatasetError, match="missing labels"):
        load_file(path, "y")


def test_single_class(tmp_path: Path) -> None:
    path = write(tmp_path / "d.csv", "a,b,y\n1,2,0\n3,4,0\n")
    with pytest.raises(DatasetError, match="single class"):
        load_file(path, "y")


def test_too_few_samples_per_class_for_split() -> None:
    X, _ = blobs(11, 2, 2)
    labels = np.array([0] * 10 + [1])
    with pytest.raises(DatasetError, match="has 1 samples.*too few for a stratified split"):
        split_dataset(make_dataset(X, labels), test_size=0.3)


def test_too_few_samples_per_class_for_validation_split() -> None:
    X, _ = blobs(12, 2, 2)
    labels = np.array([0] * 10 + [1] * 2)
    # two samples of class 1 suffice for train/test but not for train/validation/test
    split_dataset(make_dataset(X, labels), test_size=0.3)
    with pytest.raises(DatasetError, match="3 parts"):
        split_dataset(make_dataset(X, labels), test_size=0.3, validation_size=0.3)


def test_split_fractions_out_of_range() -> None:
    X, y = blobs(20, 2, 2)
    with pytest.raises(ConfigurationError, match="test_size"):
        split_dataset(make_dataset(X, y), test_size=1.5)


# -- good files -------------------------------------------------------------------------


def test_parquet_file_loads(tmp_path: Path) -> None:
    frame = pd.DataFrame({"a": [0.5, 1.5, 2.5, 3.5], "b": [1.0, 2.0, 3.0, 4.0], "y": [0, 1, 0, 1]})
    path = tmp_path / "d.parquet"
    frame.to_parquet(path)
    dataset = load_file(path, "y")
    np.testing.assert_array_equal(dataset.features, frame[["a", "b"]].to_numpy())
    np.testing.assert_array_equal(dataset.labels, [0, 1, 0, 1])
    assert dataset.feature_names == ("a", "b")
    assert dataset.target == "y"
    assert dataset.n_classes == 2


def test_text_labels(tmp_path: Path) -> None:
    path = write(tmp_path / "d.csv", "a,b,species\n1,2,cat\n3,4,dog\n5,6,cat\n")
    dataset = load_file(path, "species")
    assert dataset.labels.tolist() == ["cat", "dog", "cat"]
    assert dataset.n_classes == 2
    assert dataset.feature_names == ("a", "b")


def test_load_dataset_from_config_file(tmp_path: Path) -> None:
    path = write(tmp_path / "d.csv", "a,b,y\n1,2,0\n3,4,1\n")
    dataset = load_dataset(DatasetConfig(path=str(path), target="y"))
    assert dataset.name == "d.csv"
    assert dataset.features.shape == (2, 2)


def test_fingerprint_stable_and_sensitive(tmp_path: Path) -> None:
    text = "a,b,y\n1.5,2,0\n3,4,1\n5,6,1\n"
    first = load_file(write(tmp_path / "one.csv", text), "y")
    second = load_file(write(tmp_path / "two.csv", text), "y")
    changed = load_file(write(tmp_path / "three.csv", text.replace("5,6", "5,7")), "y")
    relabelled = load_file(write(tmp_path / "four.csv", text.replace("4,1", "4,0")), "y")
    assert len(first.fingerprint) == 64
    assert first.fingerprint == second.fingerprint
    assert changed.fingerprint != first.fingerprint
    assert relabelled.fingerprint != first.fingerprint


def test_fingerprint_independent_of_file_format(tmp_path: Path) -> None:
    frame = pd.DataFrame({"a": [1.5, 3.0, 5.0], "b": [2.0, 4.0, 6.0], "y": [0, 1, 1]})
    frame.to_csv(tmp_path / "d.csv", index=False)
    frame.to_parquet(tmp_path / "d.parquet")
    csv = load_file(tmp_path / "d.csv", "y")
    parquet = load_file(tmp_path / "d.parquet", "y")
    assert csv.fingerprint == parquet.fingerprint


# -- circuits and hyper-parameters ------------------------------------------------------


def test_zero_qubits() -> None:
    with pytest.raises(ConfigurationError, match="n_qubits must be an integer"):
        CircuitSpec(n_qubits=0, n_classes=2)


def test_too_many_qubits_for_circuit_spec() -> None:
    with pytest.raises(ConfigurationError, match=r"n_qubits must be an integer in \[1, 30\]"):
        CircuitSpec(n_qubits=31, n_classes=2)


def test_non_integer_qubits() -> None:
    with pytest.raises(ConfigurationError, match="n_qubits"):
        CircuitSpec(n_qubits=2.0, n_classes=2)  # type: ignore[arg-type]


def test_too_many_classes_for_qubits() -> None:
    with pytest.raises(ConfigurationError, match="Hamming-weight readout"):
        CircuitSpec(n_qubits=2, n_classes=4)


@pytest.mark.parametrize("field", ["ansatz_reps", "feature_map_reps"])
def test_reps_out_of_range(field: str) -> None:
    with pytest.raises(ConfigurationError, match=field):
        CircuitSpec(n_qubits=2, n_classes=2, **{field: 0})


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("feature_map", "bogus", "unknown feature map 'bogus'"),
        ("ansatz", "bogus", "unknown ansatz 'bogus'"),
        ("entanglement", "bogus", "unknown entanglement 'bogus'"),
    ],
)
def test_circuit_spec_unknown_choices(field: str, value: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        CircuitSpec(n_qubits=2, n_classes=2, **{field: value})


def test_size_guard_refuses_before_simulating() -> None:
    X, y = blobs(24, 4, 2)
    clf = QuantumClassifier(max_memory_bytes=1024, maxiter=2, random_state=0)
    with pytest.raises(SizeLimitError, match="over the limit.*max_memory_bytes"):
        clf.fit(X, y)
    assert not hasattr(clf, "weights_")


def test_evaluation_guard_refuses_before_simulating() -> None:
    X, y = blobs(24, 2, 2)
    clf = QuantumClassifier(max_circuit_evaluations=10, maxiter=2, random_state=0)
    with pytest.raises(SizeLimitError, match="circuit evaluations, over the limit of 10"):
        clf.fit(X, y)
    assert not hasattr(clf, "weights_")


@pytest.mark.parametrize(
    ("params", "error", "message"),
    [
        ({"maxiter": 0}, ConfigurationError, r"maxiter must be an integer in \[1,"),
        ({"maxiter": 2.5}, ConfigurationError, "maxiter"),
        ({"shots": 0}, ConfigurationError, r"shots must be an integer in \[1,"),
        ({"batch_size": 0}, ConfigurationError, "batch_size"),
        ({"learning_rate": 0.0}, ConfigurationError, "learning_rate"),
        ({"learning_rate": float("nan")}, ConfigurationError, "learning_rate"),
        ({"optimizer": "sgd"}, ConfigurationError, "unknown optimizer 'sgd'"),
        ({"backend": "gpu"}, ConfigurationError, "unknown backend 'gpu'"),
        ({"feature_map": "bogus"}, ConfigurationError, "unknown feature map 'bogus'"),
        ({"ansatz": "bogus"}, ConfigurationError, "unknown ansatz 'bogus'"),
        ({"entanglement": "bogus"}, ConfigurationError, "unknown entanglement 'bogus'"),
        ({"ansatz_reps": 0}, ConfigurationError, "ansatz_reps"),
        ({"feature_map_reps": 0}, ConfigurationError, "feature_map_reps"),
    ],
)
def test_bad_hyper_parameters_refused_before_simulating(
    params: dict[str, object], error: type[Exception], message: str
) -> None:
    X, y = blobs(24, 2, 2)
    clf = QuantumClassifier(**{"maxiter": 2, "random_state": 0, **params})  # type: ignore[arg-type]
    with pytest.raises(error, match=message):
        clf.fit(X, y)
    assert not hasattr(clf, "weights_")


def test_too_many_classes_for_features_in_fit() -> None:
    X, y = blobs(30, 2, 3)
    y = y.copy()
    y[:4] = 3  # four classes on two qubits: too many for the Hamming-weight readout
    clf = QuantumClassifier(maxiter=2, random_state=0, readout="hamming_weight")
    with pytest.raises(ConfigurationError, match="4 classes need at least 3 qubits"):
        clf.fit(X, y)
    assert not hasattr(clf, "weights_")
    # The z_softmax readout (the default) takes any number of classes
    assert QuantumClassifier(maxiter=2, random_state=0).fit(X, y).classes_.shape == (4,)


def test_evaluator_rejects_bad_settings() -> None:
    spec = CircuitSpec(n_qubits=2, n_classes=2)
    with pytest.raises(ConfigurationError, match="shots"):
        CircuitEvaluator(spec, shots=0, backend="aer")
    with pytest.raises(ConfigurationError, match="unknown backend"):
        CircuitEvaluator(spec, backend="gpu")
    with pytest.raises(ConfigurationError, match="numpy backend is exact only"):
        CircuitEvaluator(spec, shots=100, backend="numpy")


# -- pydantic configuration -------------------------------------------------------------


def test_training_config_maxiter_out_of_range() -> None:
    with pytest.raises(ValidationError, match="maxiter"):
        TrainingConfig(maxiter=0)


def test_training_config_shots_out_of_range() -> None:
    with pytest.raises(ValidationError, match="shots"):
        TrainingConfig(shots=0)


def test_circuit_config_unknown_feature_map() -> None:
    with pytest.raises(ValidationError, match="feature_map"):
        CircuitConfig(feature_map="bogus")  # type: ignore[arg-type]


def test_config_forbids_unknown_fields() -> None:
    with pytest.raises(ValidationError, match="extra"):
        CircuitConfig(n_qbits=3)  # type: ignore[call-arg]


def test_dataset_config_path_needs_target() -> None:
    with pytest.raises(ValidationError, match="target"):
        DatasetConfig(path="a.csv")


def test_config_field_names_match_estimator_params() -> None:
    params = {
        **CircuitConfig().model_dump(),
        **TrainingConfig().model_dump(exclude=ORCHESTRATION_FIELDS),
    }
    params.pop("n_qubits")
    clf = QuantumClassifier(**params)
    assert {k: clf.get_params()[k] for k in params} == params
