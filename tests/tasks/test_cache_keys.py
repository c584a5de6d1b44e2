"""The training's cache key and checkpoint key change with anything its result depends on.

Both keys are computed the way the flow computes them: the cache key by the training task's
own cache policy (task source + stable inputs + code version), the checkpoint key by the
store the task opens. Every field of the circuit and training settings is varied, one at a
time, with an alternative derived from the field's own type and bounds, so a field added
later is covered without editing this file.
"""

from __future__ import annotations

import shutil
import sys
import typing
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

import qmlops
from qmlops.config import ORCHESTRATION_FIELDS, CircuitConfig, TrainingConfig
from qmlops.hashing import code_version
from tasks.caching import cached
from tasks.training import checkpoint_store, train_classifier

BASE_CIRCUIT = CircuitConfig(n_qubits=2, ansatz_reps=1)
BASE_TRAINING = TrainingConfig(maxiter=5, batch_size=8, random_state=3)


def _keys(
    fingerprint: str = "data-a",
    circuit: CircuitConfig = BASE_CIRCUIT,
    training: TrainingConfig = BASE_TRAINING,
) -> tuple[str, str]:
    """(cache key, checkpoint key) of training these data with these settings."""
    prepared = SimpleNamespace(fingerprint=fingerprint)
    task = cached(train_classifier)
    cache_key = task.cache_policy.compute_key(
        task_ctx=SimpleNamespace(task=task),
        inputs={"prepared": prepared, "circuit": circuit, "training": training},
        flow_parameters={},
    )
    return str(cache_key), checkpoint_store(prepared, circuit, training).key  # type: ignore[arg-type]


def _candidates(annotation: Any, current: Any, meta: list[Any]) -> list[Any]:
    """Values of a field's type other than ``current`` (some may break its bounds)."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) is typing.Literal:
        return [value for value in args if value != current]
    if args:  # a union such as ``int | None``
        others = [a for a in args if a is not type(None)]
        found = [v for a in others for v in _candidates(a, current, meta)]
        return found + ([None] if type(None) in args and current is not None else [])
    if annotation is bool:
        return [not current]
    bounds = [getattr(m, name) for m in meta for name in ("ge", "gt") if hasattr(m, name)]
    low = bounds[0] if bounds else 0
    if annotation is int:
        return [low + 1] if current is None else [current + 1, current - 1, low + 1]
    if annotation is float:
        return [0.5] if current is None else [current / 2, current * 2]
    raise AssertionError(f"no alternative value for a field of type {annotation!r}")


def _variants(config: BaseModel) -> Iterator[tuple[str, BaseModel]]:
    """Each field changed to another valid value, one at a time."""
    for name, field in type(config).model_fields.items():
        current = getattr(config, name)
        for value in _candidates(field.annotation, current, field.metadata):
            try:
                changed = type(config).model_validate({**config.model_dump(), name: value})
            except ValidationError:
                continue
            if getattr(changed, name) != current:
                yield name, changed
                break
        else:
            raise AssertionError(f"found no other valid value for {type(config).__name__}.{name}")


def test_keys_are_stable_for_the_same_inputs() -> None:
    assert _keys() == _keys()
    assert _keys(circuit=CircuitConfig(n_qubits=2, ansatz_reps=1)) == _keys()


def test_every_circuit_setting_changes_both_keys() -> None:
    base = _keys()
    for name, circuit in _variants(BASE_CIRCUIT):
        cache_key, checkpoint_key = _keys(circuit=circuit)  # type: ignore[arg-type]
        assert cache_key != base[0], name
        assert checkpoint_key != base[1], name


def test_every_training_setting_changes_the_cache_key_and_the_estimators_the_checkpoint_key() -> (
    None
):
    base = _keys()
    checked = set()
    for name, training in _variants(BASE_TRAINING):
        cache_key, checkpoint_key = _keys(training=training)  # type: ignore[arg-type]
        assert cache_key != base[0], name
        if name in ORCHESTRATION_FIELDS:
            # A new time limit or snapshot interval resumes the same training's checkpoints.
            assert checkpoint_key == base[1], name
        else:
            assert checkpoint_key != base[1], name
        checked.add(name)
    assert {"optimizer", "maxiter", "learning_rate", "random_state"} <= checked


def test_other_data_change_both_keys() -> None:
    cache_key, checkpoint_key = _keys(fingerprint="data-b")
    assert cache_key != _keys()[0]
    assert checkpoint_key != _keys()[1]


@pytest.fixture
def fresh_code_version() -> Iterator[None]:
    """Let a test change what the code version is computed from; recomputed afterwards."""
    code_version.cache_clear()
    yield
    code_version.cache_clear()


def test_a_changed_core_source_file_changes_the_code_version_and_both_keys(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_code_version: None
) -> None:
    before = (code_version(), *_keys())
    # Given a copy of the core's sources in which one module differs by a comment
    module = sys.modules[code_version.__module__]
    sources = Path(module.__file__ or "").parent
    copy = tmp_path / "qmlops"
    shutil.copytree(sources, copy, ignore=shutil.ignore_patterns("__pycache__"))
    with (copy / "training.py").open("a") as stream:
        stream.write("# a change\n")
    monkeypatch.setattr(module, "__file__", str(copy / Path(module.__file__ or "").name))
    code_version.cache_clear()

    # When the keys are computed again, then all of them differ
    after = (code_version(), *_keys())
    assert all(old != new for old, new in zip(before, after, strict=True)), (before, after)


def test_a_new_package_version_changes_both_keys(
    monkeypatch: pytest.MonkeyPatch, fresh_code_version: None
) -> None:
    before = _keys()
    monkeypatch.setattr(qmlops, "__version__", qmlops.__version__ + ".post1")
    code_version.cache_clear()
    after = _keys()
    assert before[0] != after[0]
    assert before[1] != after[1]
