"""Shared fixtures: a real Prefect test harness and a real MLflow store per test."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import services
from serve_stack import Stack, serve_stack
from services import RunningService

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("MPLBACKEND", "Agg")


# Order in which `make test` hands tests to its workers (pytest-xdist): the longest first, so
# no worker starts a long test when the others are about to finish.
_START_FIRST = ("browser", "slow", "integration")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Start the long tests first; tests sharing the `make serve` stack run on one worker."""

    def rank(item: pytest.Item) -> int:
        marks = {mark.name for mark in item.iter_markers()}
        return next((i for i, name in enumerate(_START_FIRST) if name in marks), len(_START_FIRST))

    items.sort(key=rank)  # stable: collection order within a rank
    for item in items:
        if "served_stack" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.xdist_group("serve-stack"))


@pytest.fixture(scope="session")
def prefect_harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Run flows against a temporary Prefect server and database (started once per session).

    Persisted task results (the cache) go to a folder of this session, never to the
    developer's PREFECT_HOME.
    """
    from prefect.settings import PREFECT_LOCAL_STORAGE_PATH, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    storage = tmp_path_factory.mktemp("prefect-results")
    with (
        prefect_test_harness(server_startup_timeout=120),
        temporary_settings({PREFECT_LOCAL_STORAGE_PATH: storage}),
    ):
        yield


@pytest.fixture
def mlflow_uri(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh SQLite MLflow store for one test, exported as MLFLOW_TRACKING_URI."""
    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    return uri


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningService]:
    """A real ``prefect server start`` on a free loopback port, shared by the session.

    Clients reach it by running with ``prefect_server_env``-style variables, typically in a
    subprocess, so the in-process ``prefect_harness`` stays untouched.
    """
    with services.prefect_server(tmp_path_factory.mktemp("prefect-server")) as server:
        yield server


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningService]:
    """A real MLflow tracking server (SQLite + served artifacts) on a free loopback port."""
    with services.mlflow_server(tmp_path_factory.mktemp("mlflow-server")) as server:
        yield server


@pytest.fixture(scope="session")
def served_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """One `make serve` stack (Prefect server, MLflow server, worker, deployments) per session.

    Its settings only: each test runs `make serve` itself (a no-op once it runs), so a test
    that ends with `make stop` leaves a stack the next one can start again. Stopped at the end.
    """
    with serve_stack(tmp_path_factory) as stack:
        yield stack


@pytest.fixture
def simulator_calls(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """Count every entry into a simulator: the evaluator's batch call and Aer's primitives.

    Patched on the classes, so calls from Prefect's worker threads count too.
    """
    from qiskit_aer.primitives import EstimatorV2, SamplerV2

    from qmlops.simulation import CircuitEvaluator

    calls: Counter[str] = Counter()

    def counting(name: str, original: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            calls[name] += 1
            return original(*args, **kwargs)

        return wrapper

    for owner, method in (
        (CircuitEvaluator, "class_probabilities"),
        (CircuitEvaluator, "readout_values"),
        (EstimatorV2, "run"),
        (SamplerV2, "run"),
    ):
        name = f"{owner.__name__}.{method}"
        monkeypatch.setattr(owner, method, counting(name, getattr(owner, method)))
    return calls
