"""The sweep's schedule on plain data: start order, at most max_parallel at once (no Prefect)."""

from __future__ import annotations

import math

import pytest

from qmlops.scheduling import dispatch, longest_first, training_cost


class Handle:
    """A started piece of work; the test says when it finishes."""

    def __init__(self, name: str) -> None:
        self.name = name


class FakeRunner:
    """Starts work by recording it; finishes the running piece the test's order names next."""

    def __init__(self, finish_order: list[str]) -> None:
        self.finish_order = list(finish_order)
        self.events: list[str] = []
        self.running: set[str] = set()
        self.most_at_once = 0

    def start(self, name: str) -> Handle:
        self.events.append(f"start {name}")
        self.running.add(name)
        self.most_at_once = max(self.most_at_once, len(self.running))
        return Handle(name)

    def wait_any(self, handles: list[Handle]) -> Handle:
        assert {handle.name for handle in handles} == self.running
        name = next(name for name in self.finish_order if name in self.running)
        self.finish_order.remove(name)
        self.running.remove(name)
        self.events.append(f"end {name}")
        return next(handle for handle in handles if handle.name == name)


def test_longest_first_orders_by_decreasing_cost_and_keeps_ties_in_order() -> None:
    costs = [1.0, 5.0, 3.0, 5.0, math.inf, 0.5]

    order = longest_first(costs)

    # the refused configuration (infinite cost) first, then the two 5.0 in their given order
    assert order == [4, 1, 3, 2, 0, 5]
    assert longest_first([]) == []


def test_dispatch_starts_in_order_and_one_more_each_time_one_ends() -> None:
    # Given four pieces, two at a time, where the second started finishes first
    runner = FakeRunner(finish_order=["b", "a", "d", "c"])

    # When every finished piece is taken
    finished = [
        piece for piece, _ in dispatch(["a", "b", "c", "d"], 2, runner.start, runner.wait_any)
    ]

    # Then they are yielded as they end, and the next starts only after one has ended
    assert finished == ["b", "a", "d", "c"]
    assert runner.events == [
        "start a",
        "start b",
        "end b",
        "start c",
        "end a",
        "start d",
        "end d",
        "end c",
    ]
    assert runner.most_at_once == 2


@pytest.mark.parametrize("max_parallel", [1, 3, 10])
def test_dispatch_never_runs_more_than_max_parallel(max_parallel: int) -> None:
    names = [f"c{index}" for index in range(7)]
    runner = FakeRunner(finish_order=list(reversed(names)))

    finished = list(dispatch(names, max_parallel, runner.start, runner.wait_any))

    assert sorted(piece for piece, _ in finished) == names  # each exactly once
    assert all(handle.name == piece for piece, handle in finished)
    assert runner.most_at_once == min(max_parallel, len(names))
    assert [event for event in runner.events if event.startswith("start")] == [
        f"start {name}" for name in names
    ]


def test_dispatch_refuses_a_parallelism_below_one() -> None:
    with pytest.raises(ValueError, match="max_parallel must be at least 1"):
        next(dispatch(["a"], 0, Handle, lambda handles: handles[0]))


def test_dispatch_of_nothing_starts_nothing() -> None:
    runner = FakeRunner(finish_order=[])
    assert list(dispatch([], 2, runner.start, runner.wait_any)) == []
    assert runner.events == []


def test_training_cost_grows_with_steps_qubits_and_depth() -> None:
    from qmlops import QuantumClassifier

    def cost(n_qubits: int = 4, **params: object) -> float:
        classifier = QuantumClassifier(**params)  # type: ignore[arg-type]
        return training_cost(*classifier.plan(100, 0, n_qubits, 2))

    base = cost(ansatz_reps=2, maxiter=100)
    assert cost(ansatz_reps=2, maxiter=200) == pytest.approx(2 * base, rel=0.05)
    assert cost(ansatz_reps=3, maxiter=100) > base
    # The adjoint gradient evaluates each sample once per step: 4x the amplitudes, 4x the cost;
    # parameter shift also evaluates 2P + 1 points, and P grows with the qubits.
    assert cost(6, ansatz_reps=2, maxiter=100) == pytest.approx(4 * base)
    shifted = cost(ansatz_reps=2, maxiter=100, gradient="parameter_shift")
    assert cost(6, ansatz_reps=2, maxiter=100, gradient="parameter_shift") > 4 * shifted
    spsa = cost(ansatz_reps=2, maxiter=100, optimizer="spsa")
    assert base < spsa < shifted  # a step: 1 circuit per sample, 3, 2P + 1
