"""Search spaces and the sweep comparison, on plain data (no Prefect, no MLflow)."""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path

import pytest

from qmlops import search_space
from qmlops.errors import ConfigurationError
from qmlops.search_space import expand, load_space, override_axes, parse_space, split_seed
from qmlops.sweep_report import comparison_rows, outcome, select_best, selection_rule

# The space file that qmlops.search_space's docstring shows (indented after "::"), read from
# there so that the documented example stays true.
assert search_space.__doc__ is not None
DOCUMENTED_EXAMPLE = textwrap.dedent(search_space.__doc__.split("::\n\n")[1].split("\n\n")[0])


def test_the_documented_example_expands_to_the_grid(tmp_path: Path) -> None:
    path = tmp_path / "space.yaml"
    path.write_text(DOCUMENTED_EXAMPLE.split("random:")[0])  # its grid alone

    configurations = expand(load_space(path))

    assert [c.name for c in configurations] == ["c000", "c001", "c002", "c003"]
    assert {(c.circuit.ansatz, c.circuit.ansatz_reps) for c in configurations} == {
        ("real_amplitudes", 1),
        ("real_amplitudes", 2),
        ("efficient_su2", 1),
        ("efficient_su2", 2),
    }
    assert all(c.dataset.name == "moons" and c.circuit.n_qubits == 2 for c in configurations)
    assert all(c.training.maxiter == 10 for c in configurations)
    assert configurations[1].varied == {"ansatz": "real_amplitudes", "reps": 2}
    assert len({c.data_key for c in configurations}) == 1


def test_the_documented_example_samples_every_grid_point(tmp_path: Path) -> None:
    path = tmp_path / "space.yaml"
    path.write_text(DOCUMENTED_EXAMPLE)

    configurations = expand(load_space(path))

    assert len(configurations) == 4 * 4
    assert all(0.01 <= c.training.learning_rate <= 0.3 for c in configurations)
    assert {c.training.shots for c in configurations} <= {None, 1024}
    assert set(configurations[0].varied) == {"ansatz", "reps", "learning_rate", "shots"}


def test_json_spaces_and_exact_shots_spellings(tmp_path: Path) -> None:
    path = tmp_path / "space.json"
    path.write_text(json.dumps({"dataset": "iris", "grid": {"shots": ["exact", 256, None]}}))

    configurations = expand(load_space(path))

    # "exact" and null are the same configuration: kept once
    assert [c.training.shots for c in configurations] == [None, 256]


def test_random_search_is_reproducible_and_within_bounds() -> None:
    document = {
        "dataset": "moons",
        "grid": {"optimizer": ["adam", "spsa"]},
        "random": {
            "samples": 5,
            "seed": 3,
            "learning_rate": {"log_uniform": [0.01, 0.3]},
            "reps": {"int_uniform": [1, 3]},
            "entanglement": ["linear", "full"],
        },
    }

    first = expand(parse_space(document))
    again = expand(parse_space(document))

    assert first == again
    assert len(first) == 10
    assert all(0.01 <= c.training.learning_rate <= 0.3 for c in first)
    assert all(1 <= c.circuit.ansatz_reps <= 3 for c in first)
    assert {c.circuit.entanglement for c in first} <= {"linear", "full"}
    assert set(first[0].varied) == {"optimizer", "learning_rate", "reps", "entanglement"}


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"colour": "red"}, "unknown setting 'colour'"),
        ({"noise": "depolarizing"}, "'noise' is not available"),
        ({"grid": {"reps": []}}, "grid.reps: expected a non-empty list"),
        ({"reps": [1, 2]}, "put lists under `grid:`"),
        ({"grid": {"reps": [1, 0]}}, "configuration c001 (reps=0) is invalid"),
        ({"grid": {"ansatz": ["nope"]}}, "is invalid"),
        ({"random": {"learning_rate": {"log_uniform": [0, 1]}}}, "low > 0"),
        ({"random": {"reps": {"int_uniform": [1.5, 3]}}}, "as integers"),
        ({"random": {"reps": {"gaussian": [1, 3]}}}, "random.reps"),
        ({"reps": 1, "grid": {"reps": [1, 2]}}, "given twice"),
        ({"grid": {"ansatz_reps": [1, 2]}}, "'ansatz_reps' is called 'reps' here"),
        ({"maxiter": 5, "grid": {"maxiter": [1, 2]}}, "given twice"),
    ],
)
def test_bad_spaces_are_refused_with_the_reason(document: dict, message: str) -> None:
    with pytest.raises(ConfigurationError, match=re.escape(message)):
        expand(parse_space(document))


def test_a_missing_space_file_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="cannot read search space"):
        load_space(tmp_path / "nowhere.yaml")


def test_command_line_axes_override_the_file() -> None:
    document = {"dataset": "moons", "reps": 2, "grid": {"ansatz": ["real_amplitudes"]}}

    overridden = override_axes(document, {"reps": [1, 3], "ansatz": ["efficient_su2"]})

    assert overridden == {
        "dataset": "moons",
        "ansatz": "efficient_su2",
        "grid": {"reps": [1, 3]},
    }


def test_split_seed_defaults_to_the_fixed_seed() -> None:
    assert split_seed(parse_space({"seed": 7})) == 7
    assert split_seed(parse_space({"grid": {"seed": [1, 2]}})) == 42
    assert split_seed(parse_space({"seed": 7, "split_seed": 3})) == 3


def _outcomes() -> list[dict]:
    return [
        outcome(
            "c000",
            {"reps": 1},
            run_id="a",
            metrics={"accuracy": 0.9},
            training_time_s=2.0,
            size={"circuit_parameters": 8},
            loss_curve=[1.0, 0.5],
        ),
        outcome(
            "c001",
            {"reps": 2},
            run_id="b",
            metrics={"accuracy": 0.9},
            training_time_s=1.0,
            size={"circuit_parameters": 12},
        ),
        outcome("c002", {"reps": 30}, error="SizeLimitError: too big"),
    ]


def test_comparison_rows_keep_failures_and_the_best_follows_the_rule() -> None:
    rows = comparison_rows(_outcomes())

    assert [r["status"] for r in rows] == ["completed", "completed", "failed"]
    assert rows[2]["error"] == "SizeLimitError: too big"
    assert rows[2]["test_accuracy"] is None
    assert {len(r) for r in rows} == {len(rows[0])}
    # a tie on accuracy goes to the smaller circuit
    best = select_best(rows, "test_accuracy")
    assert best is not None
    assert best["configuration"] == "c000"
    assert "fewer circuit parameters" in selection_rule("test_accuracy")
    assert select_best(rows, "validation_accuracy") is None
