"""Retry policy shared by all tasks: transient failures are retried, bad input never is."""

from __future__ import annotations

from typing import Any

from prefect.task_engine import TaskRunTimeoutError
from pydantic import ValidationError

from qmlops.errors import InputError

RETRIES = 2
RETRY_DELAY_SECONDS = 2

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
