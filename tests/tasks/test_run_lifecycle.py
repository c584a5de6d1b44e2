"""The run lifecycle: ``tracked_run`` closes its MLflow run FINISHED, FAILED or KILLED."""

from __future__ import annotations

import signal

import pytest
from mlflow import MlflowClient
from prefect.exceptions import TerminationSignal

from tasks.tracking import TrackedRun, tracked_child_run, tracked_run

pytestmark = pytest.mark.usefixtures("prefect_harness")


def _status(uri: str, run: TrackedRun) -> tuple[str, str | None]:
    found = MlflowClient(uri).get_run(run.run_id)
    return found.info.status, found.data.tags.get("error")


def test_a_completed_block_finishes_the_run_and_its_child(mlflow_uri: str) -> None:
    with tracked_run(mlflow_uri, "lifecycle", "parent", {}) as parent:
        with tracked_child_run(parent, "child", {}) as child:
            assert _status(mlflow_uri, child) == ("RUNNING", None)
        assert _status(mlflow_uri, child) == ("FINISHED", None)
        assert _status(mlflow_uri, parent) == ("RUNNING", None)
    assert _status(mlflow_uri, parent) == ("FINISHED", None)
    tags = MlflowClient(mlflow_uri).get_run(child.run_id).data.tags
    assert tags["mlflow.parentRunId"] == parent.run_id


def test_an_error_fails_the_run_and_is_raised(mlflow_uri: str) -> None:
    with (
        pytest.raises(RuntimeError, match="broke"),
        tracked_run(mlflow_uri, "lifecycle", "failing", {}) as run,
    ):
        raise RuntimeError("broke")
    assert _status(mlflow_uri, run) == ("FAILED", "RuntimeError: broke")


@pytest.mark.parametrize(
    "interruption", [TerminationSignal(signal.SIGTERM), KeyboardInterrupt()], ids=repr
)
def test_a_signal_kills_the_run(mlflow_uri: str, interruption: BaseException) -> None:
    with (
        pytest.raises(type(interruption)),
        tracked_run(mlflow_uri, "lifecycle", "signalled", {}) as run,
    ):
        raise interruption
    status, error = _status(mlflow_uri, run)
    assert status == "KILLED"
    assert error is not None
    assert error.startswith(type(interruption).__name__)
