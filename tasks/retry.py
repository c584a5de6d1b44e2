"""Retry policy shared by all tasks: transient failures are retried, bad input never is.

:func:`retrying_task` is the one definition of a retried task; every task that may meet a
transient failure (I/O, the simulator, the tracking store) is declared with it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

from prefect import Task, task
from prefect.cache_policies import NO_CACHE
from prefect.task_engine import TaskRunTimeoutError
from pydantic import ValidationError

from qmlops.errors import InputError

RETRIES = 2
RETRY_DELAY_SECONDS = 2

P = ParamSpec("P")
R = TypeVar("R")

_PERMANENT: tuple[type[BaseException], ...] = (
    InputError,
    ValidationError,
    TypeError,
    KeyError,
    ValueError,
    NotImplementedError,
    # A task that ran out of its time budget would run out of it again.
    TaskRunTimeoutError,
)


def is_transient(error: BaseException) -> bool:
    """Whether a failure may go away on retry (I/O, simulator or tracking hiccups)."""
    return not isinstance(error, _PERMANENT)


def retry_if_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect ``retry_condition_fn``: retry only failures that :func:`is_transient` accepts."""
    try:
        state.result()
    except BaseException as error:  # noqa: BLE001 - we classify, not handle
        return is_transient(error)
    return True


def task_name(function: Callable[..., Any]) -> str:
    """A function's Prefect task name: its name in kebab case (``train_model``: ``train-model``)."""
    return function.__name__.replace("_", "-")


def retrying_task(function: Callable[P, R]) -> Task[P, R]:
    """Make ``function`` a task that retries transient failures and caches nothing.

    The task is named after the function (:func:`task_name`); failures that
    :func:`is_transient` rejects (bad input, a timeout) are not retried.

    Args:
        function: The task's body.

    Returns:
        The Prefect task.
    """
    decorate = task(
        name=task_name(function),
        retries=RETRIES,
        retry_delay_seconds=RETRY_DELAY_SECONDS,
        retry_condition_fn=retry_if_transient,
        cache_policy=NO_CACHE,
    )
    return decorate(function)
