"""The IBM runtime path in qiskit-ibm-runtime's local testing mode (FakeManilaV2, no network)."""

from __future__ import annotations

import logging
import os
import signal
import time

import numpy as np
import pytest
from core_data import blobs

from qmlops.classifier import QuantumClassifier
from qmlops.devices import DeviceTooSmallError, resolve_device
from qmlops.ibm_runtime import JobTracker, evaluate_on_ibm

TOKEN = "tok-3f9c2a7e51d04b8a"


@pytest.fixture(
    scope="module", params=[("hamming_weight", 1), ("z_softmax", 2)], ids=lambda p: p[0]
)
def trained(request: pytest.FixtureRequest) -> tuple[QuantumClassifier, np.ndarray, np.ndarray]:
    readout, reuploads = request.param
    X, y = blobs(12, 2, 2)
    model = QuantumClassifier(
        readout=readout, reuploads=reuploads, ansatz_reps=1, maxiter=10, random_state=0
    )
    return model.fit(X, y), X, y


@pytest.fixture
def manila():
    from qiskit_ibm_runtime.fake_provider import FakeManilaV2

    return FakeManilaV2()


def test_local_mode_evaluates_in_one_executor_job(
    trained: tuple,
    manila,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from qiskit_ibm_runtime.executor_sampler import Sampler

    executor_runs: list[int] = []
    run = Sampler.run

    def counting_run(self, pubs, **kwargs):
        executor_runs.append(len(pubs))
        return run(self, pubs, **kwargs)

    monkeypatch.setattr(Sampler, "run", counting_run)
    model, X, y = trained
    environ = {"QISKIT_IBM_TOKEN": TOKEN}
    device = resolve_device("ibm:ibm_manila", environ=environ)
    tracker = JobTracker()
    with caplog.at_level(logging.DEBUG):
        result = evaluate_on_ibm(
            model, X, y, device, shots=128, backend=manila, environ=environ, tracker=tracker
        )
    assert len(tracker.jobs) == 1
    assert executor_runs == [1]  # one pub: all samples as one parameter-value array
    assert type(tracker.jobs[0]).__name__ == "LocalRuntimeJob"
    assert result.primitive_calls == 1
    assert result.device == "ibm:ibm_manila"
    assert result.metrics["accuracy"] >= 0.75
    assert set(result.transpiled["layout"]) <= set(range(5))
    captured = capsys.readouterr()
    assert TOKEN not in caplog.text + captured.out + captured.err
    assert TOKEN not in repr(result)


def test_local_mode_mitigates_readout_calibrated_on_the_backend(trained: tuple, manila) -> None:
    model, X, y = trained
    device = resolve_device("ibm:ibm_manila", environ={"QISKIT_IBM_TOKEN": TOKEN})
    result = evaluate_on_ibm(model, X, y, device, shots=256, backend=manila, mitigation="readout")
    assert set(result.mitigated_metrics) == set(result.metrics)
    assert result.mitigated_metrics["accuracy"] >= 0.75


def test_local_mode_refuses_wide_circuits(trained: tuple, manila) -> None:
    device = resolve_device("ibm:ibm_manila", environ={"QISKIT_IBM_TOKEN": TOKEN})
    wide = QuantumClassifier(ansatz_reps=1, maxiter=1, random_state=0).fit(*blobs(12, 6, 2))
    with pytest.raises(DeviceTooSmallError, match="has 5"):
        evaluate_on_ibm(wide, *blobs(12, 6, 2), device, shots=10, backend=manila)


def test_sigterm_cancels_the_jobs_in_flight(
    trained: tuple, manila, monkeypatch: pytest.MonkeyPatch
) -> None:
    from qiskit_ibm_runtime.executor_sampler import Sampler

    class StuckJob:
        cancelled = False

        def job_id(self) -> str:
            return "stuck"

        def done(self) -> bool:
            return False

        def cancel(self) -> None:
            StuckJob.cancelled = True

        def result(self):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(30)  # interrupted by the SIGTERM handler

    monkeypatch.setattr(Sampler, "run", lambda self, pubs, shots=None: StuckJob())
    model, X, y = trained
    device = resolve_device("ibm:ibm_manila", environ={"QISKIT_IBM_TOKEN": TOKEN})
    tracker = JobTracker()
    with pytest.raises(SystemExit):
        evaluate_on_ibm(model, X, y, device, shots=10, backend=manila, tracker=tracker)
    assert StuckJob.cancelled
    assert tracker.cancelled == tracker.jobs
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
