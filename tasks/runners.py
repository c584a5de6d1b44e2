"""The sweep's task runners: threads of this process or Ray, and what each needs around it.

:func:`make_task_runner` picks the runner of the sweep's fan-out. Trainings on the thread
runner share this interpreter, so the flow holds :func:`shared_interpreter` around them: one
BLAS limit for all (BLAS limits are process-wide) and a short thread switch interval. Both are
process-wide settings, made here at the edge and restored after, never by the core.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from qmlops.concurrency import shared_blas_threads
from qmlops.search_space import SweepExecution
from tasks.ray_runner import RaySession, ray_task_runner

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
        api_url: The Prefect API the Ray workers must report to.
        session: The sweep's :class:`~tasks.ray_runner.RaySession`, if any (Ray only).

    Returns:
        A ``ThreadPoolTaskRunner`` with ``max_parallel`` workers, or prefect-ray's
        ``RayTaskRunner`` (:func:`tasks.ray_runner.ray_task_runner`).

    Raises:
        ConfigurationError: For a Ray cluster without a Prefect server its workers can reach.
    """
    if execution.runner == "threads":
        return ThreadPoolTaskRunner(max_workers=execution.max_parallel)
    return ray_task_runner(execution, api_url, session)


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
    :data:`SHARED_INTERPRETER_SWITCH_INTERVAL_S`. On Ray each training has a worker process to
    itself and sets its own limits, so nothing changes here.

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
