"""Checkpoints: atomic, checksummed snapshots; a resumed fit equals an uninterrupted one."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from core_data import blobs

from qmlops import QuantumClassifier
from qmlops.checkpoint import CheckpointStore, training_key


class _Interrupted(Exception):
    pass


def _interrupt_at(iteration: int):
    def callback(record) -> None:
        if record.iteration == iteration:
            raise _Interrupted

    return callback


def _classifier(optimizer: str, **extra) -> QuantumClassifier:
    return QuantumClassifier(optimizer=optimizer, maxiter=9, batch_size=8, random_state=3, **extra)


@pytest.mark.parametrize("optimizer", ["adam", "spsa"])
def test_resumed_fit_equals_uninterrupted_fit(tmp_path: Path, optimizer: str) -> None:
    X, y = blobs(24, 2, 2)
    reference = _classifier(optimizer).fit(X, y)

    # Given a fit interrupted at iteration 5 with a snapshot every 2 iterations
    store = CheckpointStore(tmp_path, "job", every=2)
    with pytest.raises(_Interrupted):
        _classifier(optimizer, callback=_interrupt_at(5)).fit(X, y, checkpoint=store)
    assert [p.name for p in store.paths()] == ["ckpt-000000002.json", "ckpt-000000004.json"]

    # When it is fitted again with the same store, it resumes and ends exactly the same
    resumed = _classifier(optimizer).fit(X, y, checkpoint=store)
    assert resumed.resumed_from_ == 4
    assert reference.resumed_from_ == 0
    np.testing.assert_array_equal(resumed.weights_, reference.weights_)
    assert resumed.loss_curve_ == reference.loss_curve_
    assert resumed.primitive_calls_ == reference.primitive_calls_


def test_corrupt_newest_snapshot_falls_back_to_the_previous_good_one(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path, "job", every=1, keep=3)
    for iteration in (1, 2, 3):
        store.save(iteration, {"value": iteration})
    newest = store.paths()[-1]
    newest.write_text(newest.read_text()[:-20])  # truncated
    middle = store.paths()[-2]
    altered = json.loads(middle.read_text())
    altered["body"]["state"]["value"] = 7  # same checksum, other content
    middle.write_text(json.dumps(altered))

    assert store.load_latest() == (1, {"value": 1}, [])
    assert store.rejected == [newest, middle]


def test_snapshots_are_written_atomically_and_pruned(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path, "job", every=1, keep=2)
    for iteration in range(1, 6):
        store.save(iteration, {"value": iteration})
    assert [p.name for p in store.paths()] == ["ckpt-000000004.json", "ckpt-000000005.json"]
    assert not list(store.folder.glob(".tmp-*"))
    assert store.load_latest() == (5, {"value": 5}, [])
    store.clear()
    assert store.load_latest() is None


def test_the_log_is_appended_and_a_damaged_log_rejects_the_snapshots_it_covers(
    tmp_path: Path,
) -> None:
    # Given three snapshots, each adding two records to the log
    store = CheckpointStore(tmp_path, "job", every=1, keep=3)
    for iteration in (1, 2, 3):
        store.save(
            iteration,
            {"value": iteration},
            log=[{"step": 2 * iteration - 1}, {"step": 2 * iteration}],
        )
    log = store.folder / "log.jsonl"
    assert log.read_text().count("\n") == 6  # appended, never rewritten
    assert CheckpointStore(tmp_path, "job").load_latest() == (
        3,
        {"value": 3},
        [{"step": step} for step in range(1, 7)],
    )

    # When a record only the newest snapshot covers is altered
    log.write_text(log.read_text().replace('{"step":5}', '{"step":9}'))

    # Then the newest snapshot is rejected and the previous one returns its 4 records
    reader = CheckpointStore(tmp_path, "job")
    assert reader.load_latest() == (2, {"value": 2}, [{"step": step} for step in range(1, 5)])
    assert reader.rejected == [store.paths()[-1]]

    # And saving after it cuts the log back to what that snapshot covers
    reader.save(3, {"value": 3}, log=[{"step": 5}])
    assert CheckpointStore(tmp_path, "job").load_latest() == (
        3,
        {"value": 3},
        [{"step": step} for step in range(1, 6)],
    )


def test_snapshot_of_another_job_is_not_used(tmp_path: Path) -> None:
    CheckpointStore(tmp_path, "a", every=1).save(3, {"value": 3})
    (tmp_path / "b").mkdir()
    for path in (tmp_path / "a").iterdir():
        (tmp_path / "b" / path.name).write_text(path.read_text())
    assert CheckpointStore(tmp_path, "b").load_latest() is None


def test_training_key_changes_with_any_input() -> None:
    base = training_key(fingerprint="f", seed=1)
    assert base == training_key(seed=1, fingerprint="f")
    assert base != training_key(fingerprint="f", seed=2)
    assert base != training_key(fingerprint="g", seed=1)
