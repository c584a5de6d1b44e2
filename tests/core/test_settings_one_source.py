"""One source for every setting: the models' defaults reach the CLI, sweeps and the estimator."""

from __future__ import annotations

import inspect

import pytest
from pydantic import ValidationError

from qmlops.classifier import QuantumClassifier
from qmlops.config import (
    MAX_ITERATIONS,
    RUN_SECTIONS,
    SECTIONS,
    CircuitConfig,
    DatasetConfig,
    TrainingConfig,
    describe_validation_error,
    resolve_circuit,
    resolve_encoding,
    resolve_model_name,
    setting_name,
)
from qmlops.data import BUILTIN_DATASETS, load_builtin
from qmlops.errors import ConfigurationError
from qmlops.preprocessing import make_preprocessor
from qmlops.search_space import AXES, expand, parse_space
from qmlops_cli import build_parser, configs_from_args, sweep_params_from_args


def _options(command: str) -> set[str]:
    parser = build_parser()
    (subparsers,) = [a for a in parser._actions if a.dest == "command"]
    return {
        option
        for action in subparsers.choices[command]._actions  # type: ignore[attr-defined]
        for option in action.option_strings
    }


def test_every_setting_is_a_cli_option_under_its_one_name() -> None:
    train = _options("train")
    for section in ("dataset", "circuit", "training", "tracking", "promotion"):
        for field in SECTIONS[section].model_fields:
            assert "--" + setting_name(section, field).replace("_", "-") in train
    sweep = _options("sweep")
    # One name per sweep axis, the same as the train option
    assert set(AXES) == {
        setting_name(section, field)
        for section in RUN_SECTIONS
        for field in SECTIONS[section].model_fields
    }
    assert all("--" + name.replace("_", "-") in sweep for name in AXES)
    assert "n_qubits" not in AXES
    assert "random_state" not in AXES


def test_cli_defaults_are_the_flow_defaults() -> None:
    from flows.train import train

    args = build_parser().parse_args(["train"])
    given = configs_from_args(args)
    defaults = {
        name: parameter.default
        for name, parameter in inspect.signature(train.fn).parameters.items()
        if name in given
    }
    assert given == defaults


def test_the_estimator_defaults_and_bounds_are_the_config_s() -> None:
    estimator = QuantumClassifier().get_params()
    for model in (CircuitConfig(), TrainingConfig()):
        for field, value in model.model_dump().items():
            # scikit-learn's convention: an estimator is unseeded unless told; runs are seeded.
            if field in estimator and field != "random_state":
                assert estimator[field] == value, field
    with pytest.raises(ValidationError):
        TrainingConfig(maxiter=MAX_ITERATIONS + 1)
    with pytest.raises(ConfigurationError, match="maxiter"):
        QuantumClassifier(maxiter=MAX_ITERATIONS + 1).plan(10, 0, 2, 2)


@pytest.mark.parametrize("name", BUILTIN_DATASETS)
def test_default_qubits_fit_every_builtin_dataset(name: str) -> None:
    data = load_builtin(name, n_samples=40)
    n_features = data.features.shape[1]
    circuit = resolve_circuit(CircuitConfig(), n_features, data.n_classes)
    assert circuit.n_qubits is not None
    assert circuit.ansatz_reps is not None
    assert circuit.n_qubits <= n_features
    assert data.n_classes <= circuit.n_qubits + 1
    make_preprocessor(n_features, circuit.n_qubits, 2.2)  # raised for 2-feature data before


def test_qubits_follow_the_data_and_explicit_values_win() -> None:
    assert resolve_circuit(CircuitConfig(), 2, 2).n_qubits == 2  # moons, circles, ad_hoc
    assert resolve_circuit(CircuitConfig(), 4, 3).n_qubits == 4  # iris
    assert resolve_circuit(CircuitConfig(), 13, 3).n_qubits == 4  # wine
    assert resolve_circuit(CircuitConfig(), 30, 2).n_qubits == 8  # breast_cancer
    assert resolve_circuit(CircuitConfig(), 30, 2).ansatz_reps == 3
    assert resolve_circuit(CircuitConfig(), 6, 7).n_qubits == 6  # the readout needs 6
    explicit = CircuitConfig(n_qubits=3, ansatz_reps=1)
    assert resolve_circuit(explicit, 30, 2) == explicit


def test_the_angle_range_follows_the_width_and_explicit_values_win() -> None:
    from tasks.data import preprocess_features

    assert DatasetConfig().encoding_scale is None  # from the circuit's width
    assert resolve_encoding(DatasetConfig(), 2).encoding_scale == 2.2  # moons
    assert resolve_encoding(DatasetConfig(), 4).encoding_scale == 2.2  # iris
    assert resolve_encoding(DatasetConfig(), 8).encoding_scale == 1.0  # breast_cancer
    explicit = DatasetConfig(encoding_scale=3.0)
    assert resolve_encoding(explicit, 8) == explicit
    # The preprocessing task applies the same rule to an empty range, for any caller
    data = load_builtin("breast_cancer", n_samples=40)
    config = DatasetConfig(name="breast_cancer")
    for n_qubits, top in ((8, 1.0), (4, 2.2)):
        prepared = preprocess_features.fn(data, config, n_qubits, 0)
        assert prepared.X_train.max() == pytest.approx(top)
    wide = preprocess_features.fn(data, DatasetConfig(encoding_scale=3.0), 8, 0)
    assert wide.X_train.max() == pytest.approx(3.0)


def test_a_cli_sweep_on_moons_gets_its_qubits_from_the_data() -> None:
    args = build_parser().parse_args(["sweep", "--dataset", "moons", "--reps", "1", "2"])
    (first, _) = expand(sweep_params_from_args(args)["space"])
    assert first.circuit.n_qubits is None  # resolved after loading, as in `qmlops train`
    assert resolve_circuit(first.circuit, 2, 2).n_qubits == 2


def test_a_long_field_name_in_a_space_points_to_its_one_name() -> None:
    with pytest.raises(ConfigurationError, match="'n_qubits' is called 'qubits' here"):
        parse_space({"n_qubits": 2})


def test_each_dataset_gets_its_own_model_name() -> None:
    assert resolve_model_name(None, DatasetConfig()) == "qmlops-iris"
    assert resolve_model_name(None, DatasetConfig(name="moons")) == "qmlops-moons"
    from_file = DatasetConfig(path="/data/My Sales 2026.csv", target="y")
    assert resolve_model_name(None, from_file) == "qmlops-My-Sales-2026"
    assert resolve_model_name("mine", DatasetConfig(name="moons")) == "mine"


def test_validation_errors_are_one_line_in_the_user_s_words() -> None:
    with pytest.raises(ValidationError) as caught:
        TrainingConfig(maxiter=0, random_state=-1)
    text = describe_validation_error(caught.value, as_options=True)
    assert "\n" not in text
    assert text.startswith("--maxiter: Input should be greater than or equal to 1; --seed: ")


def test_the_summary_says_when_training_resumed_or_came_from_the_cache(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from qmlops_cli import _print_summary

    result = {
        "metrics": {"quantum": {"accuracy": 0.9}},
        "fit_time_s": 1.0,
        "backend": "numpy",
        "run_id": "r1",
        "experiment_id": "3",
        "model_uri": "runs:/r1/model",
        "tracking_uri": "sqlite:///mlruns/mlflow.db",
        "training_cached": False,
        "resumed_from_iteration": 40,
        "promotion": {"promotion.promote": "True", "promotion.reason": "no champion yet"},
    }
    _print_summary(result)
    out = capsys.readouterr().out
    assert "resumed from the checkpoint at iteration 40" in out
    assert "champion         promoted: no champion yet" in out
    assert "#/experiments/3/runs/r1?workflowType=machine_learning" in out
    _print_summary({**result, "training_cached": True, "resumed_from_iteration": 0})
    assert "from the cache" in capsys.readouterr().out
