"""The sweep's task runners: threads of this process, worker processes or Ray, and their needs.

:func:`make_task_runner` picks the runner of the sweep's fan-out. Trainings on the thread
runner share this interpreter, so the flow holds :func:`shared_interpreter` around them: one
BLAS limit for all (BLAS limits are process-wide) and a short thread switch interval. Both are
process-wide settings, made here at the edge and restored after, never by the core.

On the process runner (:func:`process_task_runner`) and on Ray each training has a worker
process to itself and sets its own limits; the workers only need to know which Prefect server
to report to.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from prefect.task_runners import ProcessPoolTaskRunner, TaskRunner, ThreadPoolTaskRunner

from qmlops.concurrency import shared_blas_threads
from qmlops.search_space import SweepExecution
from tasks.ray_runner import RaySession, embedded_api_url, ray_task_runner

#: Python's thread switch interval while trainings share one interpreter (the thread runner).
#: A training thread gives up the GIL around every large numpy operation (about 30 times per
#: Adam step at 8 qubits) and must win it back each time. Beside a thread running Python code
#: (another configuration's MLflow logging, Prefect's client) each win waits up to the switch
#: interval, 5 ms by default: a bare 8-qubit training ran 10x slower beside a busy Python
#: thread, 1.3x at 0.1 ms, and two trainings on two threads went from 1.74x to 1.90x the speed
#: of one after the other. Below 0.1 ms the forced switches cost pure-Python threads more.
SHARED_INTERPRETER_SWITCH_INTERVAL_S = 1e-4


def make_task_runner(
    execution: SweepExecution, api_url: str | None, session: RaySession | None = None
) -> TaskRunner[Any]:
    """The task runner of the sweep's fan-out.

    Args:
        execution: Runner choice and parallelism.
        api_url: The Prefect API the worker processes and Ray workers must report to.
        session: The sweep's :class:`~tasks.ray_runner.RaySession`, if any (Ray only).

    Returns:
        A ``ThreadPoolTaskRunner`` with ``max_parallel`` workers, a ``ProcessPoolTaskRunner``
        with ``max_parallel`` worker processes (:func:`process_task_runner`), or prefect-ray's
        ``RayTaskRunner`` (:func:`tasks.ray_runner.ray_task_runner`).

    Raises:
        ConfigurationError: For a Ray cluster without a Prefect server its workers can reach.
    """
    if execution.runner == "threads":
        return ThreadPoolTaskRunner(max_workers=execution.max_parallel)
    if execution.runner == "processes":
        return process_task_runner(execution, api_url)
    return ray_task_runner(execution, api_url, session)


def process_task_runner(execution: SweepExecution, api_url: str | None) -> ProcessPoolTaskRunner:
    """Prefect's ``ProcessPoolTaskRunner``: one spawned worker process per parallel training.

    Each worker imports Prefect, MLflow and the engine once and trains the configurations it is
    handed one after the other, so two trainings never share an interpreter lock. Without
    ``PREFECT_API_URL`` Prefect's ephemeral mode would start a temporary server in every worker
    (seconds each, all on one database); the workers report to the flow's temporary server
    instead (:func:`report_to_server`).

    Args:
        execution: The sweep's execution settings (``runner="processes"``).
        api_url: The configured Prefect API, if any; else the flow's temporary server.

    Returns:
        A runner with ``max_parallel`` workers.
    """
    server = api_url or embedded_api_url()
    if server is None:  # no server and no flow run: the workers fall back to Prefect's default
        return ProcessPoolTaskRunner(max_workers=execution.max_parallel)
    return ProcessPoolTaskRunner(
        max_workers=execution.max_parallel, initializer=report_to_server, initargs=(server,)
    )


def report_to_server(api_url: str) -> None:
    """Worker-process initializer: report task runs to ``api_url`` (sets ``PREFECT_API_URL``).

    A worker hydrates the flow's settings from its own environment, so the variable set here
    before its first task decides which server its task runs reach.
    """
    os.environ["PREFECT_API_URL"] = api_url


@contextmanager
def switch_interval(seconds: float | None) -> Iterator[None]:
    """Set Python's thread switch interval (process-wide) inside the block, restore it after.

    Args:
        seconds: The interval (:func:`sys.setswitchinterval`); ``None`` leaves it as it is.
    """
    if seconds is None:
        yield
        return
    previous = sys.getswitchinterval()
    sys.setswitchinterval(seconds)
    try:
        yield
    finally:
        sys.setswitchinterval(previous)


@contextmanager
def shared_interpreter(execution: SweepExecution, threads: int) -> Iterator[None]:
    """Process-wide settings while the sweep's trainings run, restored after.

    On the thread runner the trainings share this process: BLAS is held at ``threads`` (each
    training's budget) once for all of them, and the switch interval is
    :data:`SHARED_INTERPRETER_SWITCH_INTERVAL_S`. On the process runner and on Ray each training
    has a worker process to itself and sets its own limits, so nothing changes here.

    Args:
        execution: The sweep's execution settings.
        threads: Threads each training may use
            (:func:`qmlops.concurrency.threads_per_training`).
    """
    if execution.runner != "threads":
        yield
        return
    with shared_blas_threads(threads), switch_interval(SHARED_INTERPRETER_SWITCH_INTERVAL_S):
        yield
