"""A `make serve` stack for tests: free loopback ports, state in a temporary folder.

Shared by the REST end-to-end test and the browser test; nothing is mocked.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Any

import pytest
from services import LOOPBACK, free_port

PROJECT_DIR = Path(__file__).resolve().parent.parent
RUN_TIMEOUT_S = 600.0
API_RETRY_DELAYS_S = (0.5, 1.0, 2.0, 4.0)
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


@dataclass(frozen=True)
class Stack:
    env: dict[str, str]
    state_dir: Path
    api: str
    mlflow_uri: str

    def make(self, target: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["make", "-C", str(PROJECT_DIR), target],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )

    def pids(self) -> dict[str, int]:
        return {
            path.stem: int(json.loads(path.read_text())["pid"])
            for path in self.state_dir.glob("*.pid")
        }

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        # 503 is the server's "retry this": on SQLite it answers so when another writer (a
        # service such as the scheduler) holds the database, having rolled the request back.
        # Prefect's own client retries it the same way; the raw calls here must too.
        status, content = self._call_once(method, path, body)
        for delay in API_RETRY_DELAYS_S:
            if status != HTTPStatus.SERVICE_UNAVAILABLE:
                break
            time.sleep(delay)
            status, content = self._call_once(method, path, body)
        return status, content

    def _call_once(self, method: str, path: str, body: Any) -> tuple[int, Any]:
        request = urllib.request.Request(
            self.api + path,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
            method=method,
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read() or b"null")

    def log(self, name: str) -> str:
        path = self.state_dir / f"{name}.log"
        return path.read_text(errors="replace")[-6000:] if path.exists() else ""


def process_alive(pid: int) -> bool:
    """Whether a process still runs (a zombie does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@contextmanager
def serve_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Settings for `make serve` on free ports; `make stop` on exit (serve is the test's)."""
    root = tmp_path_factory.mktemp("serve")
    prefect_port, mlflow_port = free_port(), free_port()
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("PREFECT_", "MLFLOW_", "QMLOPS_"))
    }
    env.update(
        {
            "PREFECT_PORT": str(prefect_port),
            "MLFLOW_PORT": str(mlflow_port),
            "QMLOPS_SERVE_DIR": str(root / "state"),
            "QMLOPS_MLFLOW_STORE": str(root / "mlflow"),
            # The worker runs flows in the project folder; keep their checkpoints out of it.
            "QMLOPS_CHECKPOINT_DIR": str(root / "checkpoints"),
            # score-batch reads its input from the tests' temporary folders.
            "QMLOPS_DATA_ROOT": str(tmp_path_factory.getbasetemp()),
            "PREFECT_WORKER_QUERY_SECONDS": "2",
        }
    )
    stack = Stack(
        env=env,
        state_dir=root / "state",
        api=f"http://{LOOPBACK}:{prefect_port}/api",
        mlflow_uri=f"http://{LOOPBACK}:{mlflow_port}",
    )
    try:
        yield stack
    finally:
        stack.make("stop")


def deployment(stack: Stack, flow: str, name: str) -> dict[str, Any]:
    """A deployment read through the REST API."""
    status, found = stack.call("GET", f"/deployments/name/{flow}/{name}")
    assert status == 200, found
    return dict(found)


def wait_for_run(stack: Stack, flow_run_id: str) -> dict[str, Any]:
    """The flow run once it is in a final state (fails the test after RUN_TIMEOUT_S)."""
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while time.monotonic() < deadline:
        _, run = stack.call("GET", f"/flow_runs/{flow_run_id}")
        if run["state"]["type"] in TERMINAL:
            return dict(run)
        time.sleep(2)
    pytest.fail(f"flow run {flow_run_id} did not finish:\n{stack.log('worker')}")
