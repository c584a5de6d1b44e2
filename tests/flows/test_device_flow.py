"""The train flow with a device: real Prefect engine, MLflow store, Aer noise simulators."""

from __future__ import annotations

from pathlib import Path

import pytest
from flow_params import small_train
from mlflow import MlflowClient

from flows.train import train
from qmlops.budget import BudgetExceededError
from qmlops.config import (
    DeviceConfig,
    TrackingConfig,
    TrainingConfig,
)
from qmlops.devices import MissingCredentialsError, ShotsRequiredError, UnknownDeviceError
from qmlops_cli import main

pytestmark = pytest.mark.usefixtures("prefect_harness")

TOKEN = "tok-81d2c6aa09e4f73b"
SMALL = small_train(40, TrackingConfig(experiment="devices", register_model=False))
CLI_SMALL = ["train", "--dataset", "moons", "--samples", "40", "--qubits", "2", "--maxiter", "1"]


def _runs(uri: str) -> list:
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("devices") or client.get_experiment_by_name("qmlops")
    return [] if experiment is None else client.search_runs([experiment.experiment_id])


@pytest.fixture
def count_aer_runs(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Every AerSimulator.run call (noisy simulation or readout calibration) lands here."""
    from qiskit_aer import AerSimulator

    calls: list[object] = []
    run = AerSimulator.run

    def counting(self, *args, **kwargs):
        calls.append(args)
        return run(self, *args, **kwargs)

    monkeypatch.setattr(AerSimulator, "run", counting)
    return calls


@pytest.mark.slow
def test_ideal_training_evaluated_on_fake_device_with_and_without_mitigation(
    mlflow_uri: str, count_aer_runs: list
) -> None:
    device = DeviceConfig(device="fake_manila", shots=256, mitigation="readout")
    result = train(**SMALL, device=device)

    run = MlflowClient(mlflow_uri).get_run(result["run_id"])
    metrics = run.data.metrics
    for key in ("test_accuracy", "test_accuracy_device", "test_accuracy_device_mitigated"):
        assert 0.0 <= metrics[key] <= 1.0
    assert metrics["budget_shots"] == 8 * 256 + 4 * 1000  # 8 test samples, 2-qubit calibration
    assert metrics["device_primitive_calls"] == 1
    assert metrics["device_transpiled_depth"] > 0
    assert run.data.params["device.device"] == "fake_manila"
    assert run.data.tags["qmlops.device"] == "fake_manila"
    assert len(run.data.tags["qmlops.device_layout"].split(",")) == 2
    assert run.data.tags["qmlops.device_engine"] == "numpy-density-matrix"
    assert result["backend"] == "numpy"  # trained on the exact path
    assert len(count_aer_runs) == 1  # the readout calibration: the numpy engine sampled the test


@pytest.mark.slow
def test_training_under_noise_with_spsa(mlflow_uri: str) -> None:
    training = TrainingConfig(optimizer="spsa", maxiter=3, batch_size=8, random_state=3)
    device = DeviceConfig(device="noise:depolarizing", shots=128, train_on="device")
    result = train(**{**SMALL, "training": training}, device=device)

    run = MlflowClient(mlflow_uri).get_run(result["run_id"])
    assert result["backend"] == "noise:depolarizing"
    assert run.data.tags["simulation_backend"] == "noise:depolarizing"
    assert run.data.metrics["primitive_calls"] == 3 + 1
    assert "test_accuracy" in run.data.metrics
    assert "test_accuracy_device" in run.data.metrics
    assert run.data.metrics["budget_circuits"] > 8


@pytest.mark.slow
def test_budget_guard_refuses_before_any_simulation_or_run(
    mlflow_uri: str, count_aer_runs: list
) -> None:
    device = DeviceConfig(device="fake_manila", shots=1000, max_shots=500)
    with pytest.raises(BudgetExceededError, match=r"8000 shots .* above max_shots=500"):
        train(**SMALL, device=device)
    assert count_aer_runs == []
    assert _runs(mlflow_uri) == []


@pytest.mark.parametrize(
    ("device", "error"),
    [
        (DeviceConfig(device="fake_nowhere", shots=10), UnknownDeviceError),
        (DeviceConfig(device="fake_manila"), ShotsRequiredError),
        (DeviceConfig(device="ibm:ibm_torino", shots=10), MissingCredentialsError),
    ],
)
@pytest.mark.slow
def test_bad_device_settings_are_refused_before_a_run_opens(
    mlflow_uri: str, monkeypatch: pytest.MonkeyPatch, device: DeviceConfig, error: type
) -> None:
    monkeypatch.delenv("QISKIT_IBM_TOKEN", raising=False)
    with pytest.raises(error):
        train(**SMALL, device=device)
    assert _runs(mlflow_uri) == []


@pytest.mark.parametrize(
    "options",
    [
        ["--device", "fake_nowhere", "--shots", "10"],
        ["--device", "fake_manila"],
        ["--device", "fake_manila", "--shots", "1000", "--max-shots", "10"],
        ["--device", "noise:depolarizing", "--shots", "10", "--readout-error", "0.9"],
        ["--device", "ideal", "--train-on", "device"],
    ],
)
@pytest.mark.slow
def test_cli_bad_device_input_exits_2_without_a_run(
    mlflow_uri: str, options: list[str], capsys: pytest.CaptureFixture
) -> None:
    assert main([*CLI_SMALL, *options]) == 2
    assert "qmlops:" in capsys.readouterr().err
    assert _runs(mlflow_uri) == []


def test_cli_lists_devices(capsys: pytest.CaptureFixture) -> None:
    assert main(["devices", "--source", "fake"]) == 0
    out = capsys.readouterr().out
    assert "fake_manila" in out
    assert "noise:depolarizing" not in out


@pytest.mark.slow
def test_ibm_device_in_local_mode_never_records_the_token(
    mlflow_uri: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from qiskit_ibm_runtime.fake_provider import FakeManilaV2

    import qmlops.ibm_runtime

    monkeypatch.setenv("QISKIT_IBM_TOKEN", TOKEN)
    # Local testing mode instead of the network: the runtime path is otherwise the real one.
    monkeypatch.setattr(qmlops.ibm_runtime, "open_backend", lambda device, environ: FakeManilaV2())
    device = DeviceConfig(device="ibm:ibm_manila", shots=64, max_qpu_seconds=600.0)
    result = train(**SMALL, device=device)

    client = MlflowClient(mlflow_uri)
    run = client.get_run(result["run_id"])
    assert run.data.metrics["budget_qpu_seconds"] > 0
    assert "test_accuracy_device" in run.data.metrics
    recorded = [*run.data.params.values(), *run.data.tags.values(), str(result)]
    assert not any(TOKEN in value for value in recorded)
    artifacts = Path(client.download_artifacts(run.info.run_id, "", str(tmp_path / "artifacts")))
    for path in artifacts.rglob("*"):
        if path.is_file():
            assert TOKEN.encode() not in path.read_bytes(), path


@pytest.mark.slow
def test_sweep_over_devices_compares_device_accuracy(mlflow_uri: str) -> None:
    from flows.sweep import sweep
    from qmlops.search_space import SweepExecution, parse_space

    space = parse_space(
        {
            "dataset": "moons",
            "samples": 40,
            "qubits": 2,
            "reps": 1,
            "maxiter": 2,
            "batch_size": "none",
            "device_shots": 64,
            "grid": {"device": ["ideal", "fake_manila"]},
        }
    )
    result = sweep(
        space=space,
        execution=SweepExecution(max_parallel=1),
        tracking=TrackingConfig(experiment="devices"),
    )
    by_device = {row["device"]: row for row in result["rows"]}
    assert by_device["ideal"]["test_accuracy_device"] is None
    assert 0.0 <= by_device["fake_manila"]["test_accuracy_device"] <= 1.0
    child = MlflowClient(mlflow_uri).get_run(by_device["fake_manila"]["mlflow_run_id"])
    assert child.data.tags["qmlops.device"] == "fake_manila"
