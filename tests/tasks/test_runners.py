"""The sweep's task runners and the process-wide settings the thread runner needs."""

from __future__ import annotations

import os
import sys

import pytest
from prefect.task_runners import ProcessPoolTaskRunner, ThreadPoolTaskRunner
from threadpoolctl import threadpool_info

from qmlops.search_space import SweepExecution
from tasks.runners import (
    SHARED_INTERPRETER_SWITCH_INTERVAL_S,
    make_task_runner,
    report_to_server,
    shared_interpreter,
    switch_interval,
)


def _blas_limits() -> set[int]:
    return {
        int(info["num_threads"])
        for info in threadpool_info()
        if info["user_api"] == "blas" and info.get("threading_layer") != "disabled"
    }


def test_switch_interval_is_set_inside_the_block_and_restored_after() -> None:
    default = sys.getswitchinterval()
    with switch_interval(1e-4):
        assert sys.getswitchinterval() == pytest.approx(1e-4)
    assert sys.getswitchinterval() == default
    with pytest.raises(RuntimeError), switch_interval(2e-4):
        raise RuntimeError("a failing training")
    assert sys.getswitchinterval() == default
    with switch_interval(None):
        assert sys.getswitchinterval() == default


def test_the_thread_runner_shares_one_blas_limit_and_a_short_switch_interval() -> None:
    import numpy  # noqa: F401 - its OpenBLAS

    default, blas_before = sys.getswitchinterval(), _blas_limits()
    threads = max(blas_before) + 1  # differs from the current limit on any machine

    with shared_interpreter(SweepExecution(runner="threads", max_parallel=2), threads):
        assert sys.getswitchinterval() == pytest.approx(SHARED_INTERPRETER_SWITCH_INTERVAL_S)
        assert _blas_limits() == {threads}

    assert sys.getswitchinterval() == default
    assert _blas_limits() == blas_before


@pytest.mark.parametrize("runner", ["processes", "ray"])
def test_on_worker_processes_the_flow_process_keeps_its_settings(runner: str) -> None:
    default, blas_before = sys.getswitchinterval(), _blas_limits()
    with shared_interpreter(SweepExecution.model_validate({"runner": runner}), 1):
        assert sys.getswitchinterval() == default
        assert _blas_limits() == blas_before


def test_the_thread_runner_has_max_parallel_workers() -> None:
    runner = make_task_runner(SweepExecution(runner="threads", max_parallel=3), None)
    assert isinstance(runner, ThreadPoolTaskRunner)
    assert runner._max_workers == 3


def test_the_process_runner_has_max_parallel_workers_that_report_to_the_given_server(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    api = "http://127.0.0.1:4200/api"
    runner = make_task_runner(SweepExecution(runner="processes", max_parallel=3), api)
    assert isinstance(runner, ProcessPoolTaskRunner)
    assert runner._max_workers == 3
    # the flow engine runs a duplicate of the runner: it keeps the workers' initializer
    for planned in (runner, runner.duplicate()):
        assert (planned._initializer, planned._initargs) == (report_to_server, (api,))

    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    report_to_server(api)
    assert os.environ["PREFECT_API_URL"] == api
