"""The model-quality benchmark's data sets, settings and table (no training)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import quality  # noqa: E402

from qmlops.config import resolve_circuit  # noqa: E402
from qmlops.data import Dataset, load_dataset  # noqa: E402
from qmlops_cli import build_parser, configs_from_args  # noqa: E402


def load_as_the_cli_does(name: str, folder: Path) -> tuple[Dataset, int]:
    quality_set = quality.QUALITY_SETS[name]
    quality_set.write_file(folder)
    configs = configs_from_args(build_parser().parse_args(["train", *quality_set.cli_args(folder)]))
    dataset = load_dataset(configs["dataset"], data_root=folder)
    circuit = resolve_circuit(configs["circuit"], dataset.features.shape[1], dataset.n_classes)
    return dataset, circuit.qubits


def test_the_default_run_covers_six_data_sets_of_each_kind() -> None:
    sets = [quality.QUALITY_SETS[name] for name in quality.DEFAULT_SETS]

    assert len(sets) >= 6
    assert sum(s.name.startswith("digits_") for s in sets) >= 1
    assert sum(s.name.startswith("synthetic_") for s in sets) >= 2
    assert sum(s.build is None for s in sets) >= 3


@pytest.mark.parametrize(
    ("name", "n_samples", "n_features", "classes"),
    [
        ("digits_3_8", 357, 64, {3, 8}),
        ("digits_1_7", 361, 64, {1, 7}),
        ("synthetic_10f_3c", 400, 10, {0, 1, 2}),
        ("synthetic_12f_4c", 400, 12, {0, 1, 2, 3}),
    ],
)
def test_file_data_sets_load_through_the_project_loader_at_8_qubits(
    tmp_path: Path, name: str, n_samples: int, n_features: int, classes: set[int]
) -> None:
    dataset, n_qubits = load_as_the_cli_does(name, tmp_path)

    assert dataset.features.shape == (n_samples, n_features)
    assert set(dataset.labels.tolist()) == classes
    assert n_qubits == 8


def test_synthetic_data_are_the_same_on_every_build(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()

    first, _ = load_as_the_cli_does("synthetic_12f_4c", tmp_path / "a")
    second, _ = load_as_the_cli_does("synthetic_12f_4c", tmp_path / "b")

    assert first.fingerprint == second.fingerprint


def test_builtin_sets_take_the_cli_qubits(tmp_path: Path) -> None:
    assert load_as_the_cli_does("breast_cancer", tmp_path)[1] == 8
    assert load_as_the_cli_does("moons", tmp_path)[1] == 2


def test_settings_parse_to_typed_values_and_route_encoding_fields() -> None:
    settings = quality.parse_settings(
        ["maxiter=200", "learning_rate=0.05", "optimizer=spsa", "batch_size=none"]
    )

    assert settings == {
        "maxiter": 200,
        "learning_rate": 0.05,
        "optimizer": "spsa",
        "batch_size": None,
    }
    encoding, model = quality.split_settings({"encoding_scale": 3.14, "maxiter": 5})
    assert encoding == {"encoding_scale": 3.14}
    assert model == {"maxiter": 5}


def test_unknown_settings_are_refused_before_training() -> None:
    with pytest.raises(ValueError, match="key=value"):
        quality.parse_settings(["maxiter"])
    with pytest.raises(ValueError, match="no_such_option"):
        quality.check_settings([quality.Variant("quantum", {"no_such_option": 1})])


def test_the_gap_is_taken_to_the_best_baseline_mean() -> None:
    def outcome(quantum: float, svc: float, logistic: float) -> quality.Outcome:
        return quality.Outcome(
            test_accuracy={"quantum": quantum, "svc": svc, "logistic_regression": logistic},
            train_accuracy={"quantum": 1.0, "svc": 1.0, "logistic_regression": 1.0},
            fit_seconds={"quantum": 1.0},
            n_qubits=4,
            n_train=8,
            n_test=2,
            n_classes=2,
        )

    rows = quality.table_rows(
        {"iris": [outcome(0.80, 0.90, 0.85), outcome(0.90, 0.90, 0.75)]},
        [quality.Variant("quantum")],
        ("svc", "logistic_regression"),
    )

    (row,) = rows
    assert row[5] == "0.850 ± 0.050"
    assert row[8] == "-5.0 (svc)"
    assert row[9] == "misses by 2.0"


@pytest.mark.parametrize(
    ("gap", "mark"),
    [(0.5, "meets"), (-3.0, "meets"), (-3.5, "misses by 0.5"), (-8.5, "misses; over 8 below")],
)
def test_goal_marks_follow_the_issue_thresholds(gap: float, mark: str) -> None:
    assert quality.goal_mark(gap) == mark
