"""The sweep's Ray: started (or joined) and stopped off the flow's critical path.

:func:`sweep_ray` gives the flow a :class:`RaySession` that starts Ray in the background while
the flow opens its MLflow run and stops it while the flow publishes the comparison;
:func:`ray_task_runner` is prefect-ray's ``RayTaskRunner`` on that Ray. Joining a cluster by
address fails fast, with the fix in the message, when nothing answers there
(:func:`check_reachable`) or the cluster refuses this client's token (:func:`join_error`).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from prefect.task_runners import TaskRunner

from qmlops.errors import ConfigurationError
from qmlops.search_space import SweepExecution


def ray_address(execution: SweepExecution) -> str | None:
    """The Ray cluster to join: the configured address, else ``$RAY_ADDRESS``, else none."""
    return execution.ray_address or os.environ.get("RAY_ADDRESS") or None


def worker_environment(api_url: str) -> dict[str, str]:
    """Environment the Ray workers need.

    The Prefect API to report to, plus the tracking URI, Prefect key and Prefect home where they
    are set here.
    """
    environment = {"PREFECT_API_URL": api_url, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    for name in ("MLFLOW_TRACKING_URI", "PREFECT_API_KEY", "PREFECT_HOME"):
        if os.environ.get(name):
            environment[name] = os.environ[name]
    return environment


def ray_task_runner(
    execution: SweepExecution, api_url: str | None, session: RaySession | None = None
) -> TaskRunner[Any]:
    """prefect-ray's ``RayTaskRunner`` for the sweep's fan-out.

    Args:
        execution: The sweep's execution settings (``runner="ray"``).
        api_url: The Prefect API the Ray workers must report to.
        session: The sweep's :class:`RaySession`, if any: the runner then uses the Ray it
            started (wait for it first) and leaves its stop to it.

    Returns:
        A runner that joins ``ray_address(execution)`` or starts a local Ray with
        ``max_parallel`` CPUs.

    Raises:
        ConfigurationError: For a Ray cluster without a Prefect server it can reach (every Ray
            worker would start its own temporary server and no task run would reach the
            flow's); a local Ray reports to the flow's temporary server.
    """
    from prefect_ray import RayTaskRunner

    if session is not None:
        # Entered with Ray running, RayTaskRunner neither starts nor stops it.
        return RayTaskRunner(address=session.address, init_kwargs=session.init_kwargs)
    address, init_kwargs, inherited = ray_init_arguments(
        execution, _server_for_ray(api_url, execution)
    )
    if inherited:  # the runner starts Ray itself, in no environment of ours
        init_kwargs = {**init_kwargs, "runtime_env": {"env_vars": inherited}}
    return RayTaskRunner(address=address, init_kwargs=init_kwargs)


def embedded_api_url() -> str | None:
    """The API of the temporary server the current flow runs on, if it runs on one.

    Without ``PREFECT_API_URL``, Prefect starts a temporary server on loopback for the flow;
    processes on this machine (a local Ray's workers) can report to it while the flow runs.
    """
    from prefect.context import FlowRunContext

    context = FlowRunContext.get()
    if context is None or context.client is None:
        return None
    return str(context.client.api_url)


def _server_for_ray(api_url: str | None, execution: SweepExecution) -> str:
    if api_url:
        return api_url
    embedded = embedded_api_url() if ray_address(execution) is None else None
    if embedded:
        return embedded
    raise ConfigurationError(
        "--runner ray on a Ray cluster needs a Prefect server its workers can reach: set "
        "PREFECT_API_URL (e.g. `prefect server start`, then "
        "PREFECT_API_URL=http://127.0.0.1:4200/api); a local Ray uses the flow's own server"
    )


@contextmanager
def sweep_ray(execution: SweepExecution, api_url: str | None) -> Iterator[RaySession | None]:
    """The sweep's :class:`RaySession`, started here and closed on exit; ``None`` for threads.

    Raises:
        ConfigurationError: For a Ray cluster without a Prefect server (see
            :func:`ray_task_runner`).
    """
    if execution.runner != "ray":
        yield None
        return
    session = RaySession(execution, _server_for_ray(api_url, execution)).start()
    try:
        yield session
    finally:
        session.close()


def ray_init_arguments(
    execution: SweepExecution, api_url: str
) -> tuple[str, dict[str, Any], dict[str, str]]:
    """How to reach the sweep's Ray: address, ``ray.init`` arguments, inherited environment.

    Without an address, a fresh local Ray (``"local"``: never one already running here) with
    ``max_parallel`` CPUs; its workers inherit the environment Ray starts in, which the third
    value lists. A ``runtime_env`` would do the same but costs a separate worker pool: Ray
    started 1.0 s slower and its first tasks ran 0.7 s later here. A cluster's workers cannot
    inherit: there the variables travel in the job's ``runtime_env``.
    """
    environment = worker_environment(api_url)
    address = ray_address(execution)
    if address is None:
        init_kwargs: dict[str, Any] = {
            "num_cpus": execution.max_parallel,
            "include_dashboard": False,
            "namespace": "prefect",
        }
        return "local", init_kwargs, environment
    return address, {"runtime_env": {"env_vars": environment}, "namespace": "prefect"}, {}


class RaySession:
    """The Ray a sweep runs on, started and stopped off the flow's critical path.

    ``ray.init`` takes seconds and ``ray.shutdown`` more than one: :meth:`start` begins Ray in
    a thread of its own while the flow opens its MLflow run, and :meth:`stop` lets it shut
    down while the flow publishes the comparison. The thread lives as
    long as Ray does: Ray ties the processes it starts to the thread that started them (Linux's
    parent-death signal), so a short-lived starter thread would take Ray down with it.

    Args:
        execution: The sweep's execution settings (``runner="ray"``).
        api_url: The Prefect API the workers report to.
    """

    def __init__(self, execution: SweepExecution, api_url: str) -> None:
        self.address, self.init_kwargs, self._inherited = ray_init_arguments(execution, api_url)
        self._ready = threading.Event()
        self._release = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._own, name="qmlops-ray", daemon=True)

    def start(self) -> RaySession:
        """Begin starting (or joining) Ray in the background."""
        self._thread.start()
        return self

    def wait(self) -> None:
        """Block until Ray is up.

        Raises:
            BaseException: Whatever ``ray.init`` raised.
        """
        self._ready.wait()
        if self._error is not None:
            raise self._error

    def stop(self) -> None:
        """Let Ray shut down (or disconnect) in the background; :meth:`close` waits for it."""
        self._release.set()

    def close(self, timeout_s: float = 120.0) -> None:
        """Stop Ray and wait until it is down (at once if it never came up).

        Args:
            timeout_s: How long to wait; a Ray that hangs is left to Ray's exit handler.
        """
        self._release.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    def _own(self) -> None:
        import ray

        logging.getLogger("ray._private.worker").addFilter(_keep_signal_handling_quiet)
        try:
            check_reachable(self.address)
            with _environment(self._inherited):
                ray.init(self.address, **self.init_kwargs)
        except BaseException as error:  # noqa: BLE001 - re-raised in the flow by wait()
            if isinstance(error, ConnectionError):
                error = join_error(self.address, error)
            self._error = error
            self._ready.set()
            return
        self._ready.set()
        self._release.wait()
        ray.shutdown()


class RayUnavailableError(RuntimeError):
    """The Ray cluster to join cannot be reached (it may not be up yet: try again)."""


def check_reachable(address: str, timeout_s: float = 10.0) -> None:
    """Fail fast when nothing answers at a Ray cluster's ``host:port``.

    ``ray.init`` with an address where nothing listens retries for as long as it runs, logging
    a warning every 40 s, and the sweep would never start. ``"local"`` and ``"auto"`` are not
    addresses to check.

    Args:
        address: ``host:port`` of the cluster's GCS, or ``ray://host:port`` (Ray Client).
        timeout_s: How long one connection attempt may take.

    Raises:
        RayUnavailableError: Nothing accepted a connection there.
    """
    if address in ("local", "auto"):
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return  # not host:port: left to Ray, which knows its address forms
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as error:
        raise RayUnavailableError(
            f"cannot reach the Ray cluster at {address}: {error}. Is it running, and is the "
            "address its head node's (`ray status` there prints it)?"
        ) from error


def join_error(address: str, error: ConnectionError) -> Exception:
    """What to raise when joining the Ray cluster at ``address`` failed with ``error``.

    Ray's own message sits in a traceback several causes deep; this one names the address and
    the fix. A cluster started by ``ray start`` on a machine that holds a Ray token (Ray 2.60
    writes one on the first local ``ray.init``) requires token authentication, which a client
    joining by explicit address only uses when ``RAY_AUTH_MODE=token`` says so: that is a
    configuration error, not an outage.

    Returns:
        A :class:`~qmlops.errors.ConfigurationError` for a refused token, else a
        :class:`RayUnavailableError`.
    """
    messages: list[str] = []
    cause: BaseException | None = error
    while cause is not None and len(messages) < 10:
        messages.append(f"{type(cause).__name__}: {cause}")
        cause = cause.__cause__ or cause.__context__
    if any(
        "InvalidAuthToken" in message or "AuthenticationError" in message for message in messages
    ):
        return ConfigurationError(
            f"the Ray cluster at {address} refused this client's authentication token. "
            "Clusters started by `ray start` may require token authentication: set "
            "RAY_AUTH_MODE=token with the cluster's token in ~/.ray/auth_token, "
            "RAY_AUTH_TOKEN_PATH or RAY_AUTH_TOKEN (or join with --ray-address auto on the "
            "head node)"
        )
    return RayUnavailableError(f"cannot reach the Ray cluster at {address}: {error}")


def _keep_signal_handling_quiet(record: logging.LogRecord) -> bool:
    # Started off the main thread, Ray leaves SIGTERM to the flow (Prefect marks the run, the
    # session stops Ray) and warns that it did: expected here, so not shown.
    return not record.getMessage().startswith("SIGTERM handler is not set")


@contextmanager
def _environment(variables: dict[str, str]) -> Iterator[None]:
    # Ray's processes copy the environment when they start; the old values come back after.
    previous = {name: os.environ.get(name) for name in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
