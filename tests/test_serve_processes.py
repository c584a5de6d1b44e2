"""`serve.py`'s process bookkeeping: pid files name exactly the processes it started."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "deployments"))
import serve  # noqa: E402


@pytest.fixture
def settings(tmp_path: Path) -> serve.Settings:
    return serve.Settings(
        prefect_port=1,
        mlflow_port=2,
        state_dir=tmp_path,
        mlflow_store=tmp_path / "mlflow",
        external_prefect=None,
        external_mlflow=None,
        deploy_env=None,
    )


def test_start_records_and_stop_ends_the_whole_process_group(settings: serve.Settings) -> None:
    managed = serve.Managed("sleeper", settings)
    # A parent that forks a child, like the servers' worker processes.
    pid = managed.start(["sh", "-c", "sleep 300 & sleep 300"], dict(os.environ))
    assert managed.running_pid() == pid
    assert managed.command()[:2] == ["sh", "-c"]

    assert managed.stop()

    assert managed.running_pid() is None
    assert not managed.pid_file.exists()
    assert not serve._group_alive(pid)


def test_a_pid_file_of_another_process_is_stale_and_nothing_is_killed(
    settings: serve.Settings,
) -> None:
    # Given a pid file whose pid now belongs to a process started at another time
    bystander = subprocess.Popen(["sleep", "300"])
    try:
        managed = serve.Managed("ghost", settings)
        managed.pid_file.write_text(
            json.dumps({"pid": bystander.pid, "start_ticks": "1", "command": ["sleep"]})
        )
        # Then it is not ours: not reported as running, and stop leaves it alone
        assert managed.running_pid() is None
        assert not managed.stop()
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()


def test_stop_without_a_stack_reports_nothing_running(
    settings: serve.Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    serve.stop(settings)
    assert capsys.readouterr().out.count("was not running") == 3
