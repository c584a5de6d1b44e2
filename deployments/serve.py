"""Bring up (and down) the local stack: Prefect server, MLflow server, a worker, deployments.

``make serve`` runs ``serve.py start`` and ``make stop`` runs ``serve.py stop``. Settings come
from the environment (the Makefile passes its variables through):

==============================  ==========================  ==================================
variable                        default                     meaning
==============================  ==========================  ==================================
``PREFECT_PORT``                4200                        Prefect server and UI port
``MLFLOW_PORT``                 5000                        MLflow server and UI port
``QMLOPS_SERVE_DIR``            ``.qmlops/serve``           pid files, logs, Prefect database
``QMLOPS_MLFLOW_STORE``         ``mlruns``                  MLflow SQLite store and artifacts
``QMLOPS_PREFECT_API_URL``      (unset)                     use this Prefect server instead
``QMLOPS_MLFLOW_TRACKING_URI``  (unset)                     use this MLflow server instead
``QMLOPS_DEPLOY_ENV``           (unset)                     environment file for deploy.py
==============================  ==========================  ==================================

Every started process gets its own session (process group) and a pid file recording its pid
and start time, so ``start`` never starts a second copy of a live one and ``stop`` stops
exactly the processes ``start`` started, never another process that reused the pid.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from deploy import PROJECT_DIR, deploy

HOST = "127.0.0.1"
POOL = "qmlops-local"
STARTUP_TIMEOUT_S = 240.0
STOP_TIMEOUT_S = 20.0


@dataclass(frozen=True)
class Settings:
    """Where the stack listens and keeps its state."""

    prefect_port: int
    mlflow_port: int
    state_dir: Path
    mlflow_store: Path
    external_prefect: str | None
    external_mlflow: str | None
    deploy_env: str | None

    @classmethod
    def from_environment(cls) -> Settings:
        """Read the settings from environment variables (see the module docstring)."""
        env = os.environ
        state = Path(env.get("QMLOPS_SERVE_DIR") or PROJECT_DIR / ".qmlops" / "serve")
        return cls(
            prefect_port=int(env.get("PREFECT_PORT") or 4200),
            mlflow_port=int(env.get("MLFLOW_PORT") or 5000),
            state_dir=state.resolve(),
            mlflow_store=Path(env.get("QMLOPS_MLFLOW_STORE") or PROJECT_DIR / "mlruns").resolve(),
            external_prefect=env.get("QMLOPS_PREFECT_API_URL") or None,
            external_mlflow=env.get("QMLOPS_MLFLOW_TRACKING_URI") or None,
            deploy_env=env.get("QMLOPS_DEPLOY_ENV") or None,
        )

    @property
    def prefect_api_url(self) -> str:
        """The Prefect API the worker and deploy talk to."""
        return self.external_prefect or f"http://{HOST}:{self.prefect_port}/api"

    @property
    def mlflow_uri(self) -> str:
        """The MLflow tracking URI flow runs log to."""
        return self.external_mlflow or f"http://{HOST}:{self.mlflow_port}"

    def client_env(self) -> dict[str, str]:
        """Environment of every child: one Prefect home, the API, the tracking server."""
        return {
            **os.environ,
            "PREFECT_HOME": str(self.state_dir / "prefect-home"),
            "PREFECT_API_URL": self.prefect_api_url,
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "MLFLOW_TRACKING_URI": self.mlflow_uri,
            "QMLOPS_PROJECT_DIR": str(PROJECT_DIR),
        }


def _start_ticks(pid: int) -> str | None:
    """Start time of a live process (clock ticks since boot), None when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] == "Z":  # a zombie has exited already
        return None
    return fields[19]


class Managed:
    """A background process of the stack, tracked by ``<state>/<name>.pid``."""

    def __init__(self, name: str, settings: Settings) -> None:
        self.name = name
        self.pid_file = settings.state_dir / f"{name}.pid"
        self.log_file = settings.state_dir / f"{name}.log"

    def running_pid(self) -> int | None:
        """The pid when the recorded process is still the one we started and alive."""
        try:
            record = json.loads(self.pid_file.read_text())
        except (OSError, ValueError):
            return None
        pid = int(record["pid"])
        return pid if _start_ticks(pid) == record["start_ticks"] else None

    def command(self) -> list[str]:
        """The command recorded when the process was started (empty when unknown)."""
        try:
            return [str(part) for part in json.loads(self.pid_file.read_text())["command"]]
        except (OSError, ValueError, KeyError):
            return []

    def start(self, command: list[str], env: dict[str, str]) -> int:
        """Start the command in its own session, logging to ``<name>.log``."""
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with self.log_file.open("ab") as log:
            process = subprocess.Popen(
                command,
                cwd=PROJECT_DIR,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        record = {"pid": process.pid, "start_ticks": _start_ticks(process.pid), "command": command}
        self.pid_file.write_text(json.dumps(record))
        return process.pid

    def stop(self) -> bool:
        """Stop the recorded process group (TERM, then KILL); False when nothing ran."""
        pid = self.running_pid()
        self.pid_file.unlink(missing_ok=True)
        if pid is None:
            return False
        for sig, wait_s in ((signal.SIGTERM, STOP_TIMEOUT_S), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(pid, sig)
            except ProcessLookupError:
                return True
            deadline = time.monotonic() + wait_s
            while time.monotonic() < deadline and _group_alive(pid):
                time.sleep(0.2)
            if not _group_alive(pid):
                return True
        return True

    def log_tail(self, n_chars: int = 3000) -> str:
        """The end of the process's log."""
        try:
            return self.log_file.read_text(errors="replace")[-n_chars:]
        except OSError:
            return ""


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # Members that exited but are not reaped yet (zombies) do not count.
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def _port_busy(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(1)
        return probe.connect_ex((HOST, port)) == 0


def _get(url: str) -> bytes | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.read() if response.status == 200 else None
    except (urllib.error.URLError, OSError):
        return None


def _wait_until(check: Callable[[], bool], what: str, process: Managed) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if check():
            return
        if process.running_pid() is None:
            raise SystemExit(f"serve: {what} exited during start-up:\n{process.log_tail()}")
        time.sleep(1.0)
    raise SystemExit(
        f"serve: {what} not ready after {STARTUP_TIMEOUT_S:.0f} s:\n{process.log_tail()}"
    )


def _bin(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


def _ensure_server(
    process: Managed, port: int, command: list[str], health_url: str, env: dict[str, str]
) -> None:
    pid = process.running_pid()
    if pid is not None:
        if str(port) not in process.command():
            raise SystemExit(
                f"serve: {process.name} already runs from {process.pid_file.parent} with "
                f"{' '.join(process.command())}; `make stop` it first or set QMLOPS_SERVE_DIR"
            )
        print(f"serve: {process.name} already running (pid {pid})")
        return
    if _port_busy(port):
        raise SystemExit(
            f"serve: port {port} is taken by another program; choose another port "
            f"(e.g. `make serve PREFECT_PORT=4201 MLFLOW_PORT=5001`)"
        )
    pid = process.start(command, env)
    print(f"serve: started {process.name} (pid {pid}), waiting for {health_url}")
    _wait_until(lambda: _get(health_url) is not None, process.name, process)


def _worker_online(settings: Settings, name: str) -> bool:
    request = urllib.request.Request(
        f"{settings.prefect_api_url}/work_pools/{POOL}/workers/filter",
        data=b"{}",
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            workers = json.loads(response.read())
    except (urllib.error.URLError, OSError, ValueError):
        return False
    return any(w.get("name") == name and w.get("status") == "ONLINE" for w in workers)


def start(settings: Settings) -> None:
    """Start what is not running yet, deploy ``prefect.yaml``, print the UI addresses."""
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    env = settings.client_env()
    if settings.external_prefect is None:
        _ensure_server(
            Managed("prefect-server", settings),
            settings.prefect_port,
            [_bin("prefect"), "server", "start", "--host", HOST]
            + ["--port", str(settings.prefect_port)],
            f"{settings.prefect_api_url}/health",
            env,
        )
    if settings.external_mlflow is None:
        store = settings.mlflow_store
        store.mkdir(parents=True, exist_ok=True)
        _ensure_server(
            Managed("mlflow-server", settings),
            settings.mlflow_port,
            [
                _bin("mlflow"),
                "server",
                "--backend-store-uri",
                f"sqlite:///{store / 'mlflow.db'}",
                "--artifacts-destination",
                str(store / "artifacts"),
                "--serve-artifacts",
                "--host",
                HOST,
                "--port",
                str(settings.mlflow_port),
                "--workers",
                "2",
                # uvicorn restarts a worker that misses a 5 s health check: on a busy machine
                # every worker would be killed while it is still importing MLflow.
                "--uvicorn-opts",
                "--timeout-worker-healthcheck 120",
            ],
            f"{settings.mlflow_uri}/health",
            env,
        )
    # Deploy before the worker starts: deploy creates the work pool with its default template.
    deploy(settings.deploy_env, env)
    worker = Managed("worker", settings)
    pid = worker.running_pid()
    if pid is not None:
        print(f"serve: worker already running (pid {pid})")
    else:
        name = f"qmlops-worker-{os.getpid()}"
        command = [_bin("prefect"), "worker", "start", "--pool", POOL, "--type", "process"]
        pid = worker.start(command + ["--name", name], env)
        print(f"serve: started worker {name} (pid {pid}) on work pool {POOL}")
        _wait_until(lambda: _worker_online(settings, name), "worker", worker)
    print()
    print(f"Prefect UI   {settings.prefect_api_url.removesuffix('/api')}")
    print(f"MLflow UI    {settings.mlflow_uri}")
    print('             (choose "Model training" at its top left: runs, charts, models)')
    print(f"logs         {settings.state_dir}")
    print(f"use it       export PREFECT_API_URL={settings.prefect_api_url}")
    print(f"             export MLFLOW_TRACKING_URI={settings.mlflow_uri}")


def stop(settings: Settings) -> None:
    """Stop the worker, then the servers, that ``start`` recorded."""
    for name in ("worker", "mlflow-server", "prefect-server"):
        stopped = Managed(name, settings).stop()
        print(f"serve: {name} {'stopped' if stopped else 'was not running'}")


def status(settings: Settings) -> int:
    """Print which processes run; exit status 0 when all recorded ones are alive."""
    missing = 0
    for name in ("prefect-server", "mlflow-server", "worker"):
        pid = Managed(name, settings).running_pid()
        print(f"{name:15} {'running, pid ' + str(pid) if pid else 'not running'}")
        missing += pid is None
    return 1 if missing else 0


def main(argv: list[str]) -> int:
    """``serve.py start|stop|status``."""
    if len(argv) != 1 or argv[0] not in ("start", "stop", "status"):
        print("usage: serve.py start|stop|status", file=sys.stderr)
        return 2
    settings = Settings.from_environment()
    if argv[0] == "start":
        start(settings)
    elif argv[0] == "stop":
        stop(settings)
    else:
        return status(settings)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
