"""Scheduling a sweep: which trainings start first, and at most how many run at once.

The longest trainings start first (:func:`longest_first`, by :func:`training_cost`), so a
sweep ends on short trainings instead of one long training running alone; :func:`dispatch`
then starts them in that order, never more than ``max_parallel`` at a time, and a new one
each time one finishes. A task runner's own scheduler would not keep a submission order (Ray's
does not), so the order is kept here. Nothing here knows about Prefect or Ray: starting a
training and waiting for one are the caller's functions.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

from qmlops.circuits import CircuitSpec, ResourceEstimate

Work = TypeVar("Work")
Handle = TypeVar("Handle")


def training_cost(spec: CircuitSpec, estimate: ResourceEstimate) -> float:
    """Relative cost of a training, to start the longest ones first.

    Circuit evaluations x amplitudes x circuit layers (feature map and ansatz repetitions of
    every upload, plus the readout): only the order matters, not the unit.
    """
    layers = spec.reuploads * (spec.feature_map_reps + spec.ansatz_reps) + 1
    return float(estimate.circuit_evaluations) * 2.0**spec.n_qubits * layers


def longest_first(costs: Sequence[float]) -> list[int]:
    """The order to start work in: indices by decreasing cost, equal costs in the given order.

    Args:
        costs: Relative cost of each piece of work (``inf`` for work that fails at once, so it
            is reported first and holds up nothing).

    Returns:
        Indices into ``costs``.
    """
    return sorted(range(len(costs)), key=lambda index: -costs[index])


def dispatch(
    work: Sequence[Work],
    max_parallel: int,
    start: Callable[[Work], Handle],
    wait_any: Callable[[list[Handle]], Handle],
) -> Iterator[tuple[Work, Handle]]:
    """Start work in the given order, at most ``max_parallel`` at once; yield each as it ends.

    Args:
        work: The pieces of work, in the order to start them.
        max_parallel: How many may run at once.
        start: Starts one piece and returns a handle to it (e.g. a future).
        wait_any: Given the handles of the running pieces, blocks until one has finished and
            returns its handle.

    Yields:
        ``(piece, handle)`` for each finished piece, in the order they finish; the next piece
        starts once the caller asks for the next one.

    Raises:
        ValueError: If ``max_parallel`` is below 1, or ``wait_any`` returns another handle.
    """
    if max_parallel < 1:
        raise ValueError(f"max_parallel must be at least 1, got {max_parallel}")
    waiting = list(reversed(work))
    running: list[tuple[Work, Handle]] = []
    while waiting or running:
        while waiting and len(running) < max_parallel:
            piece = waiting.pop()
            running.append((piece, start(piece)))
        finished = wait_any([handle for _, handle in running])
        index = next((i for i, (_, handle) in enumerate(running) if handle is finished), None)
        if index is None:
            raise ValueError("wait_any returned a handle that is not running")
        yield running.pop(index)
