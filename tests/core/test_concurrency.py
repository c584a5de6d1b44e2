"""The thread budget: cores shared out, OpenMP limited per training, BLAS per process."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
from threadpoolctl import threadpool_info

from qmlops.concurrency import (
    available_cores,
    shared_blas_threads,
    threads_per_training,
    training_threads,
)


def _limits(user_api: str) -> set[int]:
    return {
        int(info["num_threads"])
        for info in threadpool_info()
        if info["user_api"] == user_api and info.get("threading_layer") != "disabled"
    }


@pytest.fixture(scope="module", autouse=True)
def _openmp_and_blas_loaded() -> None:
    import numpy  # noqa: F401 - its OpenBLAS
    import qiskit_aer  # noqa: F401 - its OpenMP runtime

    assert _limits("openmp")
    assert _limits("blas")


def test_cores_are_shared_out_between_concurrent_trainings() -> None:
    assert threads_per_training(2, 2) == 1
    assert threads_per_training(1, 2) == 2
    assert threads_per_training(8, 2) == 1
    assert threads_per_training(2, None) == 1
    assert threads_per_training(2, 8) == 4
    assert 1 <= available_cores()


def test_a_training_on_a_shared_process_limits_openmp_in_its_thread_only() -> None:
    # Given limits that differ from what the training asks for (whatever the machine's cores)
    budget = max(_limits("openmp") | _limits("blas")) + 1

    def inside() -> tuple[set[int], set[int]]:
        with training_threads(budget, whole_process=False):
            return _limits("openmp"), _limits("blas")

    blas_before = _limits("blas")
    with ThreadPoolExecutor(1) as pool:
        openmp, blas = pool.submit(inside).result()

    # Then its OpenMP limit is the budget, BLAS (process-wide) is left to the caller
    assert openmp == {budget}
    assert blas == blas_before


def test_a_training_with_its_own_process_limits_blas_too_and_restores_it() -> None:
    blas_before, openmp_before = _limits("blas"), _limits("openmp")
    budget = max(openmp_before | blas_before) + 1

    with training_threads(budget, whole_process=True):
        assert _limits("openmp") == {budget}
        assert _limits("blas") == {budget}

    assert _limits("blas") == blas_before
    assert _limits("openmp") == openmp_before


def test_shared_blas_threads_holds_blas_for_the_whole_process() -> None:
    before = _limits("blas")
    with shared_blas_threads(1):
        assert _limits("blas") == {1}
        with ThreadPoolExecutor(1) as pool:  # seen from a training's worker thread too
            assert pool.submit(_limits, "blas").result() == {1}
    assert _limits("blas") == before
