"""Which command line gives which flow parameters (no flow runs; fast).

Every test goes through :func:`flow_parameters` (argv in, the validated flow parameters out)
or through ``main`` with the flow replaced by a recorder, so the expectations describe the
command's behaviour, not how the parser is built.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

import qmlops_cli
from qmlops.config import (
    CircuitConfig,
    DatasetConfig,
    ScoringConfig,
    TrackingConfig,
    TrainingConfig,
)


def flow_parameters(argv: list[str]) -> dict[str, Any]:
    """The parameters the command line passes to its flow."""
    args = qmlops_cli.build_parser().parse_args(argv)
    if args.command == "train":
        return qmlops_cli.configs_from_args(args)
    if args.command == "score":
        return qmlops_cli.score_configs_from_args(args)
    return qmlops_cli.sweep_params_from_args(args)


def test_train_defaults_are_the_flow_parameters_defaults() -> None:
    params = flow_parameters(["train"])
    assert params["dataset"] == DatasetConfig()
    assert params["circuit"] == CircuitConfig()
    assert params["training"] == TrainingConfig()
    assert params["tracking"] == TrackingConfig()


TRAIN_OPTIONS: list[tuple[list[str], str, BaseModel]] = [
    (["--dataset", "wine"], "dataset", DatasetConfig(name="wine")),
    # A file named on the command line is the user's: read where it is, as an absolute path.
    (
        ["--data", "d.csv", "--target", "y"],
        "dataset",
        DatasetConfig(path=str(Path("d.csv").absolute()), target="y"),
    ),
    (["--test-size", "0.3"], "dataset", DatasetConfig(test_size=0.3)),
    (["--validation-size", "0.1"], "dataset", DatasetConfig(validation_size=0.1)),
    (["--samples", "80"], "dataset", DatasetConfig(n_samples=80)),
    (["--qubits", "3"], "circuit", CircuitConfig(n_qubits=3)),
    (["--feature-map", "zz"], "circuit", CircuitConfig(feature_map="zz")),
    (["--feature-map-reps", "2"], "circuit", CircuitConfig(feature_map_reps=2)),
    (["--ansatz", "real_amplitudes"], "circuit", CircuitConfig(ansatz="real_amplitudes")),
    (["--reps", "3"], "circuit", CircuitConfig(ansatz_reps=3)),
    (["--entanglement", "full"], "circuit", CircuitConfig(entanglement="full")),
    (["--reuploads", "3"], "circuit", CircuitConfig(reuploads=3)),
    (["--readout", "z_softmax"], "circuit", CircuitConfig(readout="z_softmax")),
    (["--readout", "zz_softmax"], "circuit", CircuitConfig(readout="zz_softmax")),
    (["--optimizer", "spsa"], "training", TrainingConfig(optimizer="spsa")),
    (["--maxiter", "7"], "training", TrainingConfig(maxiter=7)),
    (["--learning-rate", "0.05"], "training", TrainingConfig(learning_rate=0.05)),
    (["--batch-size", "16"], "training", TrainingConfig(batch_size=16)),
    (["--batch-size", "none"], "training", TrainingConfig(batch_size=None)),
    (["--optimizer", "lbfgs"], "training", TrainingConfig(optimizer="lbfgs")),
    (
        ["--learning-rate-schedule", "exponential"],
        "training",
        TrainingConfig(learning_rate_schedule="exponential"),
    ),
    (["--early-stopping"], "training", TrainingConfig(early_stopping=True)),
    (["--validation-fraction", "0.2"], "training", TrainingConfig(validation_fraction=0.2)),
    (["--n-iter-no-change", "5"], "training", TrainingConfig(n_iter_no_change=5)),
    (["--tol", "0.001"], "training", TrainingConfig(tol=0.001)),
    (["--class-weight", "balanced"], "training", TrainingConfig(class_weight="balanced")),
    (["--class-weight", "none"], "training", TrainingConfig(class_weight=None)),
    (["--shots", "500"], "training", TrainingConfig(shots=500)),
    (["--backend", "aer"], "training", TrainingConfig(backend="aer")),
    (["--seed", "9"], "training", TrainingConfig(random_state=9)),
    (["--timeout", "60"], "training", TrainingConfig(timeout_s=60)),
    (["--checkpoint-every", "5"], "training", TrainingConfig(checkpoint_every=5)),
    (["--experiment", "e1"], "tracking", TrackingConfig(experiment="e1")),
    (["--model-name", "m1"], "tracking", TrackingConfig(model_name="m1")),
    (["--no-register"], "tracking", TrackingConfig(register_model=False)),
    (
        ["--tracking-uri", "sqlite:///x.db"],
        "tracking",
        TrackingConfig(tracking_uri="sqlite:///x.db"),
    ),
]


@pytest.mark.parametrize(
    ("options", "section", "expected"), TRAIN_OPTIONS, ids=[" ".join(o[0]) for o in TRAIN_OPTIONS]
)
def test_each_train_option_sets_its_field_and_nothing_else(
    options: list[str], section: str, expected: BaseModel
) -> None:
    params = flow_parameters(["train", *options])
    assert params[section] == expected
    defaults = flow_parameters(["train"])
    for other in ("dataset", "circuit", "training", "tracking"):
        if other != section:
            assert params[other] == defaults[other], other


@pytest.mark.parametrize(
    ("options", "n_qubits"),
    [
        (["--dataset", "moons"], None),
        (["--dataset", "breast_cancer", "--data", "d.csv", "--target", "y"], None),
        (["--dataset", "moons", "--qubits", "3"], 3),
    ],
)
def test_the_width_is_left_to_the_data_unless_given(
    options: list[str], n_qubits: int | None
) -> None:
    # The flow resolves an empty width from the loaded data (qmlops.config.resolve_circuit), so
    # the command line, the UI form and deployments mean the same run.
    circuit = flow_parameters(["train", *options])["circuit"]
    assert circuit.n_qubits == n_qubits


@pytest.mark.parametrize(
    "options",
    [
        ["--maxiter", "0"],
        ["--qubits", "0"],
        ["--learning-rate", "11"],
        ["--test-size", "0.95"],
        ["--validation-fraction", "1"],
        ["--n-iter-no-change", "0"],
        ["--tol", "-1"],
    ],
)
def test_out_of_range_values_are_refused_when_the_parameters_are_built(
    options: list[str],
) -> None:
    with pytest.raises(ValidationError):
        flow_parameters(["train", *options])


@pytest.mark.parametrize(
    "options",
    [
        ["--optimizer", "sgd"],
        ["--maxiter", "ten"],
        ["--dataset", "mnist"],
        ["--learning-rate-schedule", "step"],
        ["--class-weight", "inverse"],
    ],
)
def test_unknown_choices_and_non_numbers_are_usage_errors(
    options: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        flow_parameters(["train", *options])
    assert exit_info.value.code == 2
    assert "invalid" in capsys.readouterr().err


def test_score_options_map_to_the_scoring_parameters() -> None:
    assert flow_parameters(["score", "--input", "a.csv"]) == {
        "scoring": ScoringConfig(input_path=str(Path("a.csv").absolute()))
    }
    params = flow_parameters(
        [
            "score",
            "--input",
            "b.parquet",
            "--model-name",
            "m1",
            "--version",
            "3",
            "--output",
            "out.csv",
            "--experiment",
            "e1",
            "--tracking-uri",
            "sqlite:///x.db",
        ]
    )
    assert params["scoring"] == ScoringConfig(
        input_path=str(Path("b.parquet").absolute()),
        model_name="m1",
        model_version=3,
        output_path="out.csv",
        experiment="e1",
        tracking_uri="sqlite:///x.db",
    )


def test_score_refuses_a_version_below_one() -> None:
    with pytest.raises(ValidationError, match="model_version"):
        flow_parameters(["score", "--input", "a.csv", "--version", "0"])


def test_sweep_axis_options_become_fixed_settings_or_grid_axes() -> None:
    params = flow_parameters(
        ["sweep", "--dataset", "moons", "--qubits", "2", "3", "--maxiter", "5", "--shots", "none"]
    )
    space = params["space"]
    assert space.fixed == {"dataset": "moons", "maxiter": 5, "shots": None}
    assert space.grid == {"qubits": [2, 3]}
    assert params["execution"].runner == "threads"
    assert params["execution"].register_best is False
    assert params["tracking"] == TrackingConfig(experiment="qmlops-sweeps", register_model=False)


def test_sweep_axes_over_the_training_options() -> None:
    params = flow_parameters(
        [
            "sweep",
            "--dataset",
            "moons",
            "--optimizer",
            "adam",
            "lbfgs",
            "--early-stopping",
            "true",
            "false",
            "--class-weight",
            "none",
            "balanced",
        ]
    )
    space = params["space"]
    assert space.grid == {
        "optimizer": ["adam", "lbfgs"],
        "early_stopping": [True, False],
        "class_weight": [None, "balanced"],
    }


def test_sweep_execution_and_tracking_options() -> None:
    params = flow_parameters(
        [
            "sweep",
            "--dataset",
            "moons",
            "--runner",
            "ray",
            "--max-parallel",
            "3",
            "--ray-address",
            "127.0.0.1:6379",
            "--select-by",
            "test_f1_macro",
            "--register-best",
            "--experiment",
            "s1",
            "--model-name",
            "m1",
        ]
    )
    execution = params["execution"]
    assert (execution.runner, execution.max_parallel, execution.ray_address) == (
        "ray",
        3,
        "127.0.0.1:6379",
    )
    assert execution.selection_metric == "test_f1_macro"
    assert execution.register_best is True
    assert params["tracking"] == TrackingConfig(
        experiment="s1", model_name="m1", register_model=True
    )


def test_sweep_runner_choices_come_from_the_execution_model() -> None:
    params = flow_parameters(["sweep", "--dataset", "moons", "--runner", "processes"])
    assert params["execution"].runner == "processes"


class _FlowCalled(Exception):
    pass


def test_main_passes_the_parameters_and_force_to_the_train_flow(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import flows.train

    calls: list[dict[str, Any]] = []

    def recorder(**kwargs: Any) -> None:
        calls.append(kwargs)
        raise _FlowCalled

    monkeypatch.setattr(flows.train, "train", recorder)
    argv = ["train", "--dataset", "moons", "--maxiter", "3"]
    with pytest.raises(_FlowCalled):
        qmlops_cli.main([*argv, "--force"])
    with pytest.raises(_FlowCalled):
        qmlops_cli.main(argv)
    forced, plain = calls
    assert forced.pop("force") is True
    assert plain.pop("force") is False
    assert forced == plain == flow_parameters(argv)


def test_shots_given_with_a_device_are_the_device_s() -> None:
    params = flow_parameters(["train", "--device", "fake_manila", "--shots", "1024"])
    assert (params["device"].device, params["device"].shots) == ("fake_manila", 1024)
    assert params["training"].shots is None  # training stays exact
    exact = flow_parameters(["train", "--shots", "1024"])
    assert (exact["training"].shots, exact["device"].shots) == (1024, None)
    both = flow_parameters(["train", "--device", "fake_manila", "--device-shots", "64"])
    assert both["device"].shots == 64
