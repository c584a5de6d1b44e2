"""Thread budget: the cores this process may use and the threads each computation gets.

The one place for the core count and for OpenMP/BLAS thread limits (through threadpoolctl).
Two facts shape the helpers: an OpenMP limit (Aer's simulator) holds for the calling thread
only, while a BLAS limit (numpy's matrix products) holds for the whole process. So a training
sets its own OpenMP limit, and trainings that share a process share one BLAS limit, set once
around all of them by whoever runs them.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import threading
from collections.abc import Iterator
from typing import Any

from threadpoolctl import threadpool_limits


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask, e.g. under taskset or a cgroup)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - not on Linux
        return max(1, os.cpu_count() or 1)


_loaded_libraries: tuple[int, Any] | None = None


def _thread_pools() -> Any:
    """The handle of threadpoolctl on the loaded thread pools, found again after new imports.

    Finding the libraries reads every loaded shared object (about 14 ms once Qiskit and
    scikit-learn are in), and a training asks for the limit when it starts. A new native
    library comes with an import, so the handle is kept until the count of modules changes;
    the limits themselves are read live from it.
    """
    global _loaded_libraries
    modules = len(sys.modules)
    if _loaded_libraries is None or _loaded_libraries[0] != modules:
        from threadpoolctl import ThreadpoolController

        _loaded_libraries = (modules, ThreadpoolController())
    return _loaded_libraries[1]


def threadpool_limit() -> int | None:
    """The smallest thread limit threadpoolctl reports for a threaded BLAS or OpenMP library.

    ``threadpoolctl.threadpool_limits(n)`` (or ``OMP_NUM_THREADS``/``OPENBLAS_NUM_THREADS``)
    lowers it; ``None`` if no such library is loaded.
    """
    limits = [
        int(info["num_threads"])
        for info in (library.info() for library in _thread_pools().lib_controllers)
        if info.get("threading_layer") != "disabled" and info.get("num_threads")
    ]
    return min(limits) if limits else None


def resolve_threads(requested: int) -> int:
    """Threads a simulation may use.

    Args:
        requested: A positive count is used as given; ``0`` means automatic: the cores this
            process may use, capped by the current threadpoolctl limit (so a caller that runs
            several trainings at once under ``threadpool_limits(1)`` gets one thread each).

    Returns:
        At least 1.
    """
    if requested > 0:
        return int(requested)
    limit = threadpool_limit()
    cores = available_cores()
    return max(1, cores if limit is None else min(cores, limit))


def threads_per_training(max_parallel: int, cores: int | None) -> int:
    """Simulator and BLAS threads each of ``max_parallel`` concurrent trainings may use.

    The cores are shared out so that concurrent trainings do not oversubscribe the machine.
    """
    return max(1, (cores or 1) // max(1, max_parallel))


@contextlib.contextmanager
def training_threads(threads: int, *, whole_process: bool) -> Iterator[None]:
    """Hold the training run inside the block to ``threads`` threads.

    Args:
        threads: Thread budget of the training (:func:`threads_per_training`).
        whole_process: Whether the training has its process to itself (a Ray worker): then
            the process-wide BLAS limit is set here too. Trainings that share a process share
            one BLAS limit instead (:func:`shared_blas_threads`, set around all of them).
    """
    with contextlib.ExitStack() as limits:
        limits.enter_context(threadpool_limits(limits=threads, user_api="openmp"))
        if whole_process:
            limits.enter_context(threadpool_limits(limits=threads, user_api="blas"))
        yield


@contextlib.contextmanager
def shared_blas_threads(threads: int) -> Iterator[None]:
    """Hold BLAS at ``threads`` threads in this whole process inside the block, restore it after.

    For trainings that run on threads of one process, each within ``threads`` (BLAS limits are
    process-wide, so they are set once around all of them, not by each).
    """
    with threadpool_limits(limits=threads, user_api="blas"):
        yield


@functools.cache
def _blas_libraries() -> tuple[Any, ...]:
    """The threadpoolctl controllers of the loaded BLAS libraries, found once.

    Finding them reads every loaded shared object; the adjoint gradient holds BLAS at one
    thread at every optimizer step.
    """
    from threadpoolctl import ThreadpoolController

    return tuple(ThreadpoolController().select(user_api="blas").lib_controllers)


_blas_lock = threading.Lock()
_blas_users = 0
_blas_restore: list[tuple[Any, int]] = []


_OPENBLAS_THREADED_MIN = 2**18
"""OpenBLAS's gemm runs on one thread below 65536 times GEMM_MULTITHREAD_THRESHOLD (4)
multiply-adds (its interface/gemm.c)."""


@contextlib.contextmanager
def single_threaded_blas(largest_product: int | None = None) -> Iterator[None]:
    """Hold numpy's BLAS at one thread while the engine runs its own worker threads.

    The engine's worker threads each call BLAS; a threaded BLAS inside each of them would
    oversubscribe the cores. BLAS limits are process-wide, so concurrent users share one
    limit: the first sets it, the last restores what was there before. The libraries are set
    directly (threadpoolctl's ``limit`` re-reads every library's state on each use, which
    costs more than a small gradient step's own arithmetic).

    Args:
        largest_product: Multiply-adds of the largest matrix product inside the block, if
            known: below OpenBLAS's own threading threshold the limit is left alone, since
            setting it would only cost time.
    """
    if largest_product is not None and largest_product < _OPENBLAS_THREADED_MIN:
        yield
        return
    global _blas_users
    with _blas_lock:
        if _blas_users == 0:
            for library in _blas_libraries():
                threads = library.get_num_threads()
                if threads is not None and threads != 1:
                    library.set_num_threads(1)
                    _blas_restore.append((library, threads))
        _blas_users += 1
    try:
        yield
    finally:
        with _blas_lock:
            _blas_users -= 1
            if _blas_users == 0:
                for library, threads in _blas_restore:
                    library.set_num_threads(threads)
                _blas_restore.clear()
