"""Real services for integration tests: a Prefect server and an MLflow tracking server.

Each is started as a child process on a free loopback port, waited for until its health
endpoint answers, and stopped (its whole process group) when the context exits. Tests use
these through the fixtures in ``tests/conftest.py``; nothing here is mocked.
"""

from __future__ import annotations

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


@contextmanager
def _service(
    command: list[str],
    url: str,
    health_path: str,
    log_path: Path,
    env: Mapping[str, str] | None = None,
    timeout_s: float = STARTUP_TIMEOUT_S,
) -> Iterator[RunningService]:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
    service = RunningService(url=url, process=process, log_path=log_path)
    try:
        _wait_healthy(service, url + health_path, timeout_s)
        yield service
    finally:
        _stop(process)


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
def mlflow_server(workdir: Path, workers: int = 2) -> Iterator[RunningService]:
    """Run an MLflow tracking server (SQLite backend, served local artifacts) on loopback.

    The SQLite store is created by the single server process before any client connects,
    so concurrent clients never race its migration.

    Args:
        workdir: Folder for the store, the artifact root and the log.
        workers: Server worker processes (``make serve`` runs more than one too).

    Yields:
        The running server; ``url`` is its tracking URI (``http://127.0.0.1:<port>``).
    """
    port = free_port()
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
    ]
    with _service(command, f"http://{LOOPBACK}:{port}", "/health", workdir / "mlflow.log") as svc:
        yield svc
