"""Real services for integration tests: a Prefect server, an MLflow tracking server, a Ray head.

Each is started as a child process on a free loopback port, waited for until its health
endpoint answers, and stopped (its whole process group) when the context exits. Tests use
these through the fixtures in ``tests/conftest.py``; nothing here is mocked.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

LOOPBACK = "127.0.0.1"
STARTUP_TIMEOUT_S = 180.0


def free_port() -> int:
    """Return a TCP port on loopback that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOOPBACK, 0))
        return int(probe.getsockname()[1])


def venv_bin(name: str) -> str:
    """Path of a console script installed beside the running interpreter."""
    return str(Path(sys.executable).with_name(name))


def run_qmlops(
    args: list[str], env: Mapping[str, str], cwd: Path, timeout_s: float = 600
) -> subprocess.CompletedProcess[str]:
    """Run the ``qmlops`` command line to completion, its output captured as text."""
    return subprocess.run(
        [venv_bin("qmlops"), *args],
        env=dict(env),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )


@dataclass(frozen=True)
class RunningService:
    """A started service: its base URL, the process and the log it writes."""

    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log_tail(self, n_chars: int = 4000) -> str:
        """The end of the service's log, for failure messages."""
        try:
            return self.log_path.read_text(errors="replace")[-n_chars:]
        except OSError:
            return ""


def _wait_healthy(service: RunningService, health_url: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if service.process.poll() is not None:
            raise RuntimeError(
                f"service exited with {service.process.returncode} before it was healthy:\n"
                + service.log_tail()
            )
        try:
            with urllib.request.urlopen(health_url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{health_url} not healthy after {timeout_s:.0f} s:\n" + service.log_tail())


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    # The servers fork workers (uvicorn, gunicorn); stop the whole group, politely first.
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
    except ProcessLookupError:
        pass


def _launch(
    command: list[str], url: str, log_path: Path, env: Mapping[str, str] | None = None
) -> RunningService:
    # A session of its own, so that _stop can end the service with everything it forked.
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
    return RunningService(url=url, process=process, log_path=log_path)


@contextmanager
def _service(
    command: list[str],
    url: str,
    health_path: str,
    log_path: Path,
    env: Mapping[str, str] | None = None,
    timeout_s: float = STARTUP_TIMEOUT_S,
) -> Iterator[RunningService]:
    service = _launch(command, url, log_path, env)
    try:
        _wait_healthy(service, url + health_path, timeout_s)
        yield service
    finally:
        _stop(service.process)


def prefect_server_env(home: Path, port: int) -> dict[str, str]:
    """Environment that points Prefect clients (and the server itself) at one server."""
    return {
        "PREFECT_HOME": str(home),
        "PREFECT_API_URL": f"http://{LOOPBACK}:{port}/api",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_API_HOST": LOOPBACK,
        "PREFECT_SERVER_API_PORT": str(port),
    }


@contextmanager
def prefect_server(workdir: Path) -> Iterator[RunningService]:
    """Run ``prefect server start`` on a free loopback port with its own home and database.

    Args:
        workdir: Folder for the server's PREFECT_HOME (database included) and log.

    Yields:
        The running server; ``url`` is the API URL (``http://127.0.0.1:<port>/api``).
    """
    port = free_port()
    home = workdir / "prefect-home"
    env = prefect_server_env(home, port)
    command = [venv_bin("prefect"), "server", "start", "--host", LOOPBACK, "--port", str(port)]
    with _service(
        command, env["PREFECT_API_URL"], "/health", workdir / "prefect-server.log", env
    ) as service:
        yield service


@contextmanager
def mlflow_server(
    workdir: Path, workers: int = 2, port: int | None = None
) -> Iterator[RunningService]:
    """Run an MLflow tracking server (SQLite backend, served local artifacts) on loopback.

    The SQLite store is created by the single server process before any client connects,
    so concurrent clients never race its migration.

    Args:
        workdir: Folder for the store, the artifact root and the log.
        workers: Server worker processes (``make serve`` runs more than one too).
        port: Port to listen on (default: a free one); pass a stopped server's port to
            restart it on the same store and URL.

    Yields:
        The running server; ``url`` is its tracking URI (``http://127.0.0.1:<port>``).
    """
    port = port or free_port()
    store = workdir / "mlflow"
    store.mkdir(parents=True, exist_ok=True)
    command = [
        venv_bin("mlflow"),
        "server",
        "--backend-store-uri",
        f"sqlite:///{store / 'mlflow.db'}",
        "--artifacts-destination",
        str(store / "artifacts"),
        "--host",
        LOOPBACK,
        "--port",
        str(port),
        "--workers",
        str(workers),
        # As `make serve`: uvicorn restarts a worker that misses a 5 s health check, and on a
        # busy machine it would kill every worker while it still imports MLflow.
        "--uvicorn-opts",
        "--timeout-worker-healthcheck 120",
    ]
    with _service(command, f"http://{LOOPBACK}:{port}", "/health", workdir / "mlflow.log") as svc:
        yield svc


FLOW_CHILD = Path(__file__).with_name("flow_child.py")


@contextmanager
def ray_head(workdir: Path, cpus: int = 2, timeout_s: float = 120.0) -> Iterator[str]:
    """Run a one-node Ray cluster (``ray start --head --block``) on loopback, as a user would.

    Token authentication is on (``RAY_AUTH_MODE=token``), as ``ray start`` turns it on where a
    Ray token exists. Stopped, with every process it started, when the context exits.

    Args:
        workdir: Folder for the log.
        cpus: CPUs the node offers.
        timeout_s: How long to wait for the node to come up.

    Yields:
        The cluster's address (``127.0.0.1:<port>``) for ``ray.init``/``--ray-address``.
    """
    import shutil
    import tempfile

    port = free_port()
    # Ray's socket paths must stay short: its session folder goes under /tmp, not the workdir.
    temp_dir = tempfile.mkdtemp(prefix="qmlops-ray-", dir="/tmp")
    command = [
        venv_bin("ray"),
        "start",
        "--head",
        "--block",
        f"--port={port}",
        f"--node-ip-address={LOOPBACK}",
        f"--num-cpus={cpus}",
        "--include-dashboard=false",
        "--disable-usage-stats",
        f"--temp-dir={temp_dir}",
    ]
    env = {"RAY_AUTH_MODE": "token", "RAY_USAGE_STATS_ENABLED": "0"}
    service = _launch(command, f"{LOOPBACK}:{port}", workdir / "ray-head.log", env)
    process = service.process
    try:
        deadline = time.monotonic() + timeout_s
        while "Ray runtime started" not in service.log_tail(100_000):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the Ray head did not start:\n" + service.log_tail())
            time.sleep(0.5)
        yield service.url
    finally:
        # `ray start --block` stops the node's processes on Ctrl-C; SIGTERM it ignores.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGINT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=30)
        _stop(process)
        shutil.rmtree(temp_dir, ignore_errors=True)


@dataclass
class FlowProcess:
    """The ``train`` flow running in a child process (see ``tests/flow_child.py``)."""

    process: subprocess.Popen[bytes]
    outcome_path: Path
    log_path: Path

    def wait(self, timeout_s: float = 600) -> dict:
        """Wait for the child to exit; its outcome (state, result or error) as a dict."""
        import json

        self.process.wait(timeout=timeout_s)
        if not self.outcome_path.exists():
            return {"state": None, "returncode": self.process.returncode, "log": self.log()}
        outcome = json.loads(self.outcome_path.read_text())
        outcome["returncode"] = self.process.returncode
        return outcome

    def log(self) -> str:
        """The child's stdout and stderr."""
        return self.log_path.read_text(errors="replace")


def start_flow(
    workdir: Path, name: str, params: dict, env: Mapping[str, str] | None = None
) -> FlowProcess:
    """Start ``train(**params)`` in a child process with ``workdir`` as its working directory.

    Args:
        workdir: Working directory (checkpoints, default stores and logs land there).
        name: Names the child's files (``<name>.params.json``, ``.outcome.json``, ``.log``).
        params: Flow parameters as plain data (``dataset``, ``circuit``, ... and ``force``).
        env: Extra environment (tracking URI, Prefect API URL, faults).
    """
    import json

    workdir.mkdir(parents=True, exist_ok=True)
    params_path = workdir / f"{name}.params.json"
    params_path.write_text(json.dumps(params))
    outcome_path = workdir / f"{name}.outcome.json"
    log_path = workdir / f"{name}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, str(FLOW_CHILD), str(params_path), str(outcome_path)],
            cwd=workdir,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={
                **os.environ,
                "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                "MPLBACKEND": "Agg",
                **(env or {}),
            },
        )
    return FlowProcess(process, outcome_path, log_path)


def wait_for_file(path: Path, process: subprocess.Popen[bytes], timeout_s: float = 600) -> None:
    """Wait until ``path`` exists (a child reached a fault point), failing if it exits first."""
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if process.poll() is not None:
            raise RuntimeError(f"child exited with {process.returncode} before writing {path}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear within {timeout_s:.0f} s")
        time.sleep(0.2)
