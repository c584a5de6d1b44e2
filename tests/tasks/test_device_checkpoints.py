"""Checkpoints of a training on a device: their own key, and a forced re-run discards them."""

from __future__ import annotations

from pathlib import Path

import pytest

from qmlops.config import CircuitConfig, DatasetConfig, DeviceConfig, TrainingConfig
from tasks.data import load_dataset, preprocess_features
from tasks.devices import training_device
from tasks.training import CHECKPOINT_DIR_ENV, checkpoint_store, discard_checkpoints


def test_forced_rerun_discards_the_checkpoints_of_a_training_on_the_device(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(CHECKPOINT_DIR_ENV, str(tmp_path))
    dataset = DatasetConfig(name="moons", n_samples=40)
    circuit = CircuitConfig(n_qubits=2, ansatz_reps=1)
    training = TrainingConfig(maxiter=3, random_state=3)
    prepared = preprocess_features.fn(load_dataset.fn(dataset), dataset, 2, 3)
    device = training_device(
        DeviceConfig(device="noise:depolarizing", shots=128, train_on="device")
    )
    on_device = checkpoint_store(prepared, circuit, training, device)
    exact = checkpoint_store(prepared, circuit, training)
    assert on_device.folder != exact.folder
    on_device.save(1, {"weights": [0.0]})
    exact.save(1, {"weights": [0.0]})

    discard_checkpoints.fn(prepared, circuit, training, device)

    assert on_device.paths() == []
    assert len(exact.paths()) == 1  # the exact training's checkpoints are another job's
