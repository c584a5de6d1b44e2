"""Progress logging of the training task: a line every 10 iterations, about 20 at most."""

from __future__ import annotations

import pytest

from tasks.training import progress_interval


@pytest.mark.parametrize(
    ("maxiter", "every"), [(5, 10), (100, 10), (200, 10), (201, 11), (500, 25), (2000, 100)]
)
def test_progress_interval_caps_the_lines_per_training(maxiter: int, every: int) -> None:
    assert progress_interval(maxiter) == every
    assert maxiter // every <= 20
