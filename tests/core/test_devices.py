"""Device registry, noise-aware evaluation, training under noise and the budget guard.

Real Aer noise simulators on small devices (fake_manila: 5 qubits), 2-qubit circuits, few shots.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from core_data import blobs

from qmlops.budget import (
    BudgetExceededError,
    check_budget,
    estimate_device_budget,
    plan_device_run,
)
from qmlops.classifier import QuantumClassifier
from qmlops.config import DeviceConfig
from qmlops.devices import (
    Device,
    DeviceTooSmallError,
    MissingCredentialsError,
    NoiseParameterError,
    NoiseParameters,
    ShotsRequiredError,
    UnknownDeviceError,
    check_device_fits,
    fake_backend_class,
    list_devices,
    resolve_device,
)
from qmlops.errors import ConfigurationError, InputError, SizeLimitError
from qmlops.noisy import DeviceClassifier, DeviceEvaluator, evaluate_on_device, transpile_for_device


@pytest.fixture(scope="module")
def trained() -> tuple[QuantumClassifier, np.ndarray, np.ndarray]:
    """The default model: the z_softmax readout on re-uploaded data."""
    X, y = blobs(16, 2, 2)
    model = QuantumClassifier(ansatz_reps=1, maxiter=15, random_state=0).fit(X, y)
    return model, X, y


@pytest.fixture(scope="module")
def trained_hamming() -> tuple[QuantumClassifier, np.ndarray, np.ndarray]:
    """The Hamming-weight (here: parity) readout, one upload."""
    X, y = blobs(16, 2, 2)
    model = QuantumClassifier(
        readout="hamming_weight", reuploads=1, ansatz_reps=1, maxiter=15, random_state=0
    ).fit(X, y)
    return model, X, y


@pytest.fixture(scope="module")
def trained_pairs() -> tuple[QuantumClassifier, np.ndarray, np.ndarray]:
    """The zz_softmax readout: each qubit's Z and the neighbours' Z Z into the head."""
    X, y = blobs(16, 2, 2)
    model = QuantumClassifier(readout="zz_softmax", ansatz_reps=1, maxiter=15, random_state=0)
    return model.fit(X, y), X, y


@pytest.fixture(params=["hamming_weight", "z_softmax", "zz_softmax"])
def either_readout(
    request: pytest.FixtureRequest,
) -> tuple[QuantumClassifier, np.ndarray, np.ndarray]:
    fixtures = {"hamming_weight": "trained_hamming", "z_softmax": "trained"}
    return request.getfixturevalue(fixtures.get(request.param, "trained_pairs"))


# -- registry --------------------------------------------------------------------------------


def test_list_devices_names_sizes_and_sources() -> None:
    rows = {row.name: row for row in list_devices()}
    assert rows["ideal"].source == "ideal"
    assert rows["noise:depolarizing"].source == "noise"
    assert rows["fake_manila"].n_qubits == 5
    assert "cx" in rows["fake_manila"].basis_gates
    assert rows["fake_guadalupe"].n_qubits == 16
    assert rows["fake_perth"].source == "fake"
    assert "ibm:<backend>" in rows
    assert sum(row.source == "fake" for row in rows.values()) > 50


@pytest.mark.slow
def test_list_devices_builds_no_backend() -> None:
    # Listing reads configuration files: qiskit-ibm-runtime (seconds to import) stays unloaded.
    code = (
        "import sys; from qmlops.devices import list_devices; list_devices(); "
        "print('qiskit_ibm_runtime' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_fake_names_are_the_provider_classes_preferring_v2() -> None:
    from qiskit_ibm_runtime import fake_provider

    assert fake_backend_class("fake_manila") is fake_provider.FakeManilaV2
    assert fake_backend_class("fake_perth") is fake_provider.FakePerth
    assert fake_backend_class("fake_guadalupe") is fake_provider.FakeGuadalupeV2
    listed = {row.name for row in list_devices() if row.source == "fake"}
    classes = {
        getattr(fake_provider, name).backend_name
        for name in dir(fake_provider)
        if name.startswith("Fake") and hasattr(getattr(fake_provider, name), "backend_name")
    }
    assert listed == classes


def test_unknown_device_lists_known_ones() -> None:
    with pytest.raises(UnknownDeviceError, match="fake_manila") as caught:
        resolve_device("fake_nowhere")
    assert isinstance(caught.value, InputError | ConfigurationError)
    with pytest.raises(UnknownDeviceError):
        resolve_device("ibm:Not A Name", environ={"QISKIT_IBM_TOKEN": "x"})


def test_circuit_wider_than_device_and_missing_shots_are_refused() -> None:
    manila = resolve_device("fake_manila")
    with pytest.raises(DeviceTooSmallError, match="6 qubits but fake_manila has 5"):
        check_device_fits(manila, 6, 100)
    with pytest.raises(ShotsRequiredError):
        check_device_fits(manila, 2, None)
    check_device_fits(resolve_device("ideal"), 4, None)


@pytest.mark.parametrize(
    "rates",
    [(-0.1, 0.01, 0.02), (0.001, 1.5, 0.02), (0.001, 0.01, float("nan")), ("0.1", 0.01, 0.02)],
)
def test_malformed_noise_parameters(rates: tuple) -> None:
    with pytest.raises(NoiseParameterError):
        NoiseParameters(*rates)


def test_ibm_device_needs_a_token_in_the_environment() -> None:
    with pytest.raises(MissingCredentialsError, match="QISKIT_IBM_TOKEN"):
        resolve_device("ibm:ibm_torino", environ={})
    device = resolve_device("ibm:ibm_torino", environ={"QISKIT_IBM_TOKEN": "secret-token"})
    assert device.is_hardware
    assert device.backend_name == "ibm_torino"
    assert "secret-token" not in repr(device)


# -- noisy execution -------------------------------------------------------------------------


def test_transpiled_once_per_description(trained: tuple) -> None:
    model, _, _ = trained
    manila = resolve_device("fake_manila")
    first = transpile_for_device(manila, model.spec_, 1)
    assert transpile_for_device(manila, model.spec_, 1) is first
    assert len(first.layout) == 2
    assert set(first.layout) <= set(range(5))
    assert first.two_qubit_gates >= 1
    assert first.depth > 0
    ops = set(first.circuit.count_ops())
    assert ops <= {"cx", "id", "rz", "sx", "x", "measure", "barrier"}


def test_fake_device_evaluation_is_one_call(either_readout: tuple) -> None:
    model, X, y = either_readout
    result = evaluate_on_device(model, X, y, resolve_device("fake_manila"), shots=256)
    assert result.primitive_calls == 1
    assert result.circuits == X.shape[0]
    assert result.engine == "numpy-density-matrix"
    assert result.metrics["accuracy"] >= 0.75  # separable data survive Manila's noise
    assert result.transpiled["transpiled_two_qubit_gates"] >= 1
    assert result.mitigated_metrics == {}


def _probabilities(model: QuantumClassifier, X: np.ndarray, device: Device, **kw) -> np.ndarray:
    evaluator = DeviceEvaluator(model.spec_, device, shots=2000, seed=1, **kw)
    return evaluator.class_probabilities([(X, model.weights_[None, :])])[0][0]


def _values(model: QuantumClassifier, X: np.ndarray, device: Device, **kw) -> np.ndarray:
    evaluator = DeviceEvaluator(model.spec_, device, shots=4000, seed=1, **kw)
    circuit_weights = model.weights_[None, : model.spec_.n_circuit_weights]
    return evaluator.readout_values([(X, circuit_weights)])[0][0]


def _exact_values(model: QuantumClassifier, X: np.ndarray) -> np.ndarray:
    circuit_weights = model.weights_[None, : model.spec_.n_circuit_weights]
    return model._evaluator_.readout_values([(X, circuit_weights)])[0][0]


QUIET = NoiseParameters(0.0, 0.0, 0.0)


def test_noise_parameters_reach_the_simulator(trained_hamming: tuple) -> None:
    model, X, _ = trained_hamming
    exact = model.predict_proba(X)
    quiet = resolve_device("noise:depolarizing", QUIET)
    random_readout = resolve_device("noise:depolarizing", NoiseParameters(0.0, 0.0, 0.5))
    assert np.abs(_probabilities(model, X, quiet) - exact).max() < 0.06
    # Bits flipped with probability 1/2: the parity readout is a coin toss.
    assert np.abs(_probabilities(model, X, random_readout) - 0.5).max() < 0.06


@pytest.mark.parametrize("fixture", ["trained", "trained_pairs"])
def test_softmax_readouts_on_a_noise_free_device_agree_with_the_exact_model(
    fixture: str, request: pytest.FixtureRequest
) -> None:
    model, X, _ = request.getfixturevalue(fixture)
    assert model.readout == {"trained": "z_softmax", "trained_pairs": "zz_softmax"}[fixture]
    quiet = resolve_device("noise:depolarizing", QUIET)
    exact = _exact_values(model, X)
    assert np.abs(exact[:, 0] - exact[:, 1]).max() > 0.3  # swapped qubits would show
    # 4000 shots: each Z estimate's standard deviation is at most 1/sqrt(4000) ~ 0.016.
    assert np.abs(_values(model, X, quiet) - exact).max() < 0.06
    assert np.abs(_probabilities(model, X, quiet) - model.predict_proba(X)).max() < 0.06


def test_z_softmax_reads_random_bits_as_the_head_bias_alone(trained: tuple) -> None:
    model, X, _ = trained
    random_readout = resolve_device("noise:depolarizing", NoiseParameters(0.0, 0.0, 0.5))
    assert np.abs(_values(model, X, random_readout)).max() < 0.06
    # Every Z near 0: the head's softmax of its bias for every sample.
    head = model.weights_[None, model.spec_.n_circuit_weights :]
    bias_only = model._evaluator_.class_readout.probabilities(np.zeros((1, 1, 2)), head)[0, 0]
    np.testing.assert_allclose(
        _probabilities(model, X, random_readout), np.tile(bias_only, (len(X), 1)), atol=0.06
    )


def test_readout_mitigation_undoes_readout_error(either_readout: tuple) -> None:
    model, X, y = either_readout
    exact = model.predict_proba(X)
    noisy = resolve_device("noise:depolarizing", NoiseParameters(0.0, 0.0, 0.15))
    raw = _probabilities(model, X, noisy)
    mitigated = _probabilities(model, X, noisy, mitigation="readout")
    assert np.abs(mitigated - exact).mean() < 0.5 * np.abs(raw - exact).mean()
    exact_values = _exact_values(model, X)
    raw_values = _values(model, X, noisy)
    mitigated_values = _values(model, X, noisy, mitigation="readout")
    assert np.abs(mitigated_values - exact_values).mean() < (
        0.5 * np.abs(raw_values - exact_values).mean()
    )
    both = evaluate_on_device(model, X, y, noisy, shots=512, mitigation="readout")
    assert set(both.mitigated_metrics) == set(both.metrics)
    assert both.mitigated_metrics["accuracy"] >= 0.75


def test_device_evaluator_refuses_bad_settings(trained: tuple) -> None:
    model, _, _ = trained
    with pytest.raises(ShotsRequiredError):
        DeviceEvaluator(model.spec_, resolve_device("fake_manila"), shots=None)
    with pytest.raises(ConfigurationError, match="mitigation"):
        DeviceEvaluator(model.spec_, resolve_device("fake_manila"), shots=10, mitigation="zne")
    with pytest.raises(ConfigurationError, match="optimization_level"):
        DeviceEvaluator(model.spec_, resolve_device("fake_manila"), shots=10, optimization_level=7)


@pytest.mark.parametrize(("readout", "reuploads"), [("hamming_weight", 1), ("z_softmax", 2)])
def test_training_under_noise_batches_each_step_and_stores_a_plain_model(
    readout: str, reuploads: int
) -> None:
    X, y = blobs(12, 2, 2)
    model = DeviceClassifier(
        device="fake_manila",
        device_shots=64,
        optimizer="spsa",
        maxiter=3,
        ansatz_reps=1,
        readout=readout,
        reuploads=reuploads,
        random_state=0,
    ).fit(X, y)
    assert model.backend_ == "fake_manila"
    assert model.primitive_calls_ == model.maxiter + 1  # one sampler call per step
    assert len(model.transpiled_["layout"]) == 2
    assert not np.array_equal(model.weights_, model.initial_weights_)
    # SPSA perturbs every weight at once: the head's (z_softmax) moved with the circuit's.
    head = slice(model.spec_.n_circuit_weights, None)
    assert model.weights_[head].shape == (model.spec_.class_readout().n_head_weights,)
    assert not np.array_equal(model.weights_[head], model.initial_weights_[head]) or (
        readout == "hamming_weight"
    )
    restored = QuantumClassifier.from_state(model.to_state())
    assert (restored.readout, restored.reuploads) == (readout, reuploads)
    np.testing.assert_allclose(restored.predict_proba(X), model.predict_proba(X), atol=1e-9)
    assert "device" in model.get_params()
    assert "device" not in model.to_state()["params"]


# -- budget guard ----------------------------------------------------------------------------


def test_budget_estimate_counts_circuits_shots_and_calibration() -> None:
    manila = resolve_device("fake_manila")
    plain = estimate_device_budget(manila, shots=100, n_qubits=2, evaluation_circuits=30)
    assert (plain.circuits, plain.shots, plain.primitive_calls) == (30, 3000, 1)
    assert plain.qpu_seconds is None
    mitigated = estimate_device_budget(
        manila, shots=100, n_qubits=2, evaluation_circuits=30, mitigation="readout"
    )
    assert mitigated.circuits == 34
    assert mitigated.shots == 3000 + 4 * 1000
    hardware = resolve_device("ibm:ibm_torino", environ={"QISKIT_IBM_TOKEN": "t"})
    qpu = estimate_device_budget(hardware, shots=1000, n_qubits=2, evaluation_circuits=30)
    assert qpu.qpu_seconds is not None
    assert qpu.qpu_seconds > 30 * 1000 * 250e-6


def test_budget_guard_prints_estimate_and_limit() -> None:
    hardware = resolve_device("ibm:ibm_torino", environ={"QISKIT_IBM_TOKEN": "t"})
    estimate = estimate_device_budget(hardware, shots=4000, n_qubits=2, evaluation_circuits=100)
    with pytest.raises(BudgetExceededError, match=r"max_qpu_seconds=60") as caught:
        check_budget(estimate, None, 60)
    assert f"{estimate.qpu_seconds:.1f}" in str(caught.value)
    assert isinstance(caught.value, SizeLimitError)
    with pytest.raises(BudgetExceededError, match=r"400000 shots .* above max_shots=1000"):
        check_budget(estimate, 1000, None)
    check_budget(estimate, None, None)


def test_plan_counts_training_under_noise_and_refuses_before_any_circuit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from qiskit_aer import AerSimulator

    calls: list[object] = []
    monkeypatch.setattr(AerSimulator, "run", lambda *a, **k: calls.append(a))
    config = DeviceConfig(
        device="fake_manila", shots=100, train_on="device", max_shots=10_000, mitigation="none"
    )
    model = DeviceClassifier(device="fake_manila", device_shots=100, optimizer="spsa", maxiter=5)
    with pytest.raises(BudgetExceededError, match="max_shots=10000"):
        plan_device_run(
            config, model, n_train=40, n_validation=0, n_test=10, n_features=2, n_classes=2
        )
    assert calls == []
    plan = plan_device_run(
        config.model_copy(update={"max_shots": None}),
        model,
        n_train=40,
        n_validation=0,
        n_test=10,
        n_features=2,
        n_classes=2,
    )
    assert plan is not None
    assert plan.estimate.primitive_calls == 5 + 1 + 1
    assert plan.estimate.circuits > 10
    assert calls == []
    ideal = DeviceConfig()
    assert (
        plan_device_run(
            ideal, model, n_train=4, n_validation=0, n_test=1, n_features=2, n_classes=2
        )
        is None
    )
    assert json.dumps(plan.estimate.metrics())


# -- sweeps over devices ---------------------------------------------------------------------


def test_sweep_space_varies_the_device() -> None:
    from qmlops.search_space import expand, parse_space, with_device
    from qmlops.sweep_report import comparison_rows, outcome

    space = parse_space({"qubits": 2, "grid": {"device": ["ideal", "fake_manila"]}})
    ideal, manila = expand(with_device(space, DeviceConfig(shots=64, mitigation="readout")))
    assert (ideal.device.device, manila.device.device) == ("ideal", "fake_manila")
    assert manila.device.shots == 64
    assert manila.device.mitigation == "readout"
    assert expand(space)[1].device.shots is None  # without the default device: no shots
    rows = comparison_rows(
        [
            outcome("c000", {"device": "ideal"}, metrics={"accuracy": 0.9}),
            outcome(
                "c001", {"device": "fake_manila"}, metrics={"accuracy": 0.9, "accuracy_device": 0.7}
            ),
        ]
    )
    assert [row["test_accuracy_device"] for row in rows] == [None, 0.7]
    assert "test_accuracy_device" not in comparison_rows([outcome("c", {}, metrics={})])[0]
