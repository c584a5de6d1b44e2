"""Sweep tasks: train one configuration as a nested MLflow run; choose the task runner.

``train_configuration`` is what the sweep fans out. It reuses the training, evaluation and
tracking tasks of the ``train`` flow (they run as nested task runs), so every child run is as
complete as a single training run. It runs in a worker thread (thread runner) or in a Ray
worker process (``RayTaskRunner``), so everything it needs comes in as arguments and all it
returns is a JSON-safe outcome (:func:`qmlops.sweep_report.outcome`).
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import socket
import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, cast

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner
from threadpoolctl import threadpool_limits

from qmlops.circuits import CircuitSpec, ResourceEstimate
from qmlops.classifier import QuantumClassifier
from qmlops.config import DatasetConfig
from qmlops.data import Dataset
from qmlops.errors import ConfigurationError, InputError
from qmlops.sweep import SweepConfiguration, SweepExecution, training_cost
from qmlops.sweep_report import outcome
from tasks.data import PreparedData
from tasks.evaluation import evaluate_models
from tasks.hygiene import close_or_remember
from tasks.tracking import (
    TrackedRun,
    end_tracking_run,
    log_evaluation,
    log_model,
    log_run_inputs,
    log_training,
    start_child_run,
)
from tasks.training import build_classifier, train_classifier


def _plan(
    configuration: SweepConfiguration, prepared: PreparedData, n_classes: int
) -> tuple[CircuitSpec, ResourceEstimate]:
    n_validation = 0 if prepared.X_val is None else prepared.X_val.shape[0]
    return build_classifier(configuration.circuit, configuration.training).plan(
        prepared.X_train.shape[0], n_validation, prepared.X_train.shape[1], n_classes
    )


def estimated_cost(
    configuration: SweepConfiguration, prepared: PreparedData, n_classes: int
) -> float:
    """Relative cost of training a configuration (:func:`qmlops.sweep.training_cost`).

    A configuration its size guard or checks refuse costs infinity: started first, it fails at
    once and is reported, holding up nothing.
    """
    try:
        return training_cost(*_plan(configuration, prepared, n_classes))
    except InputError:
        return math.inf


@task(
    name="train-configuration",
    task_run_name="train-{configuration.name}",
    retries=0,  # its inner tasks retry transient failures; a failure here is reported
    cache_policy=NO_CACHE,
    persist_result=True,
)
def train_configuration(
    configuration: SweepConfiguration,
    dataset: Dataset,
    prepared: PreparedData,
    baseline_evaluations: dict[str, dict[str, Any]],
    parent: TrackedRun,
    threads: int,
    own_process: bool,
    model_name: str = "qmlops-classifier",
) -> dict[str, Any]:
    """Train and evaluate one configuration and record it as a child of the sweep's run.

    The size guard runs before the child run opens; a refused configuration fails this task
    (the sweep reports it) without leaving a run behind.

    Args:
        configuration: The configuration.
        dataset: Its dataset (identity and fingerprint are logged).
        prepared: The shared split and encoder of its dataset.
        baseline_evaluations: Test evaluations of the classical baselines on the same split.
        parent: The sweep's MLflow run (the child opens in its experiment).
        threads: OpenMP/BLAS threads this training may use.
        own_process: Whether this task has its process to itself (Ray): then the process-wide
            BLAS limit is set here; in threads, the flow sets it once for all.
        model_name: Name the model is registered under if it wins (recorded only).

    Returns:
        The outcome record (metrics, time, circuit size, loss curve, child run id).
    """
    with ExitStack() as limits:
        # OpenMP (Aer) limits are per calling thread; BLAS limits are process-wide.
        limits.enter_context(threadpool_limits(limits=threads, user_api="openmp"))
        if own_process:
            limits.enter_context(threadpool_limits(limits=threads, user_api="blas"))
        _plan(configuration, prepared, dataset.n_classes)  # the size guard, before any run
        child = start_child_run(
            parent,
            run_name=configuration.name,
            tags={
                "sweep.configuration": configuration.name,
                "sweep.parent_run_id": parent.run_id,
            },
        )
        try:
            log_run_inputs(
                child,
                {
                    "dataset": configuration.dataset.model_dump(),
                    "circuit": configuration.circuit.model_dump(),
                    "training": configuration.training.model_dump(),
                    "sweep": {
                        "configuration": configuration.name,
                        **{f"varied.{k}": v for k, v in configuration.varied.items()},
                        "threads": threads,
                    },
                },
                dataset,
            )
            classifier = cast(
                QuantumClassifier,
                train_classifier(prepared, configuration.circuit, configuration.training),
            )
            evaluations = {
                **evaluate_models({"quantum": classifier}, prepared),
                **baseline_evaluations,
            }
            log_training(child, classifier)
            log_evaluation(child, evaluations)
            log_model(child, classifier, prepared, list(dataset.feature_names), model_name, False)
            end_tracking_run(child, "FINISHED")
        except BaseException as error:
            close_or_remember(child, error)  # KILLED on SIGTERM, FAILED otherwise
            raise
    from qmlops.circuits import circuit_summary

    validation = classifier.validation_accuracy_curve_
    return outcome(
        configuration.name,
        configuration.varied,
        run_id=child.run_id,
        metrics=evaluations["quantum"]["metrics"],
        validation_accuracy=validation[-1] if validation else None,
        training_time_s=classifier.fit_time_,
        size={
            **circuit_summary(classifier.spec_),
            "circuit_evaluations": classifier.circuit_evaluations_,
        },
        loss_curve=classifier.loss_curve_,
    )


def configuration_task(execution: SweepExecution) -> Any:
    """``train_configuration`` persisting its results where ``execution.result_storage`` says.

    A folder (a path or ``file://`` URL) becomes a saved ``LocalFileSystem`` block; anything else
    is a Prefect storage block slug (``s3-bucket/qmlops-results``) that every worker can read.
    Without it, Prefect's default local storage (``$PREFECT_HOME/storage``) is used, which Ray
    workers on this machine share.
    """
    storage = execution.result_storage
    if storage is None:
        return train_configuration
    if storage.startswith(("/", "file://", ".")):
        from prefect.filesystems import LocalFileSystem

        folder = Path(storage.removeprefix("file://")).resolve()
        # Prefect wants storage saved server-side (workers load it by slug): one block per folder.
        name = "qmlops-sweep-" + hashlib.sha256(str(folder).encode()).hexdigest()[:16]
        LocalFileSystem(basepath=str(folder)).save(name, overwrite=True)
        storage = f"local-file-system/{name}"
    return train_configuration.with_options(result_storage=storage)


def data_key_label(dataset: DatasetConfig, n_qubits: int) -> str:
    """Readable name of a prepared data set: ``<dataset>-<n>q``."""
    name = Path(dataset.path).stem if dataset.path else dataset.name
    return f"{name}-{n_qubits}q"


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


def make_task_runner(
    execution: SweepExecution, api_url: str | None, session: RaySession | None = None
) -> TaskRunner[Any]:
    """The task runner of the sweep's fan-out.

    Args:
        execution: Runner choice and parallelism.
        api_url: The Prefect API the Ray workers must report to.
        session: The sweep's :class:`RaySession`, if any: the runner then uses the Ray it
            started (wait for it first) and leaves its stop to it.

    Returns:
        A ``ThreadPoolTaskRunner`` with ``max_parallel`` workers, or a ``RayTaskRunner`` that
        joins ``ray_address(execution)`` or starts a local Ray with ``max_parallel`` CPUs.

    Raises:
        ConfigurationError: For a Ray cluster without a Prefect server it can reach (every Ray
            worker would start its own temporary server and no task run would reach the
            flow's); a local Ray reports to the flow's temporary server.
    """
    if execution.runner == "threads":
        return ThreadPoolTaskRunner(max_workers=execution.max_parallel)
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
        ConfigurationError: For Ray without a Prefect server (see :func:`make_task_runner`).
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
