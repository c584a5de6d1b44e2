"""Parameters of a train flow run small enough for the flow tests (moons, 2 qubits, full batch)."""

from __future__ import annotations

from typing import Any

from qmlops.config import CircuitConfig, DatasetConfig, TrackingConfig, TrainingConfig


def small_train(
    n_samples: int, tracking: TrackingConfig, *, maxiter: int = 3, random_state: int = 3
) -> dict[str, Any]:
    """The ``dataset``, ``circuit``, ``training`` and ``tracking`` arguments of the train flow."""
    return {
        "dataset": DatasetConfig(name="moons", n_samples=n_samples),
        "circuit": CircuitConfig(n_qubits=2, ansatz_reps=1),
        "training": TrainingConfig(maxiter=maxiter, batch_size=None, random_state=random_state),
        "tracking": tracking,
    }
