"""The service fixtures start real servers that answer on loopback."""

from __future__ import annotations

import json
import urllib.request

import pytest
from services import LOOPBACK, RunningService

pytestmark = pytest.mark.integration


def test_prefect_server_answers_on_loopback(prefect_server: RunningService) -> None:
    assert prefect_server.url.startswith(f"http://{LOOPBACK}:")
    with urllib.request.urlopen(prefect_server.url + "/admin/version", timeout=10) as response:
        assert json.loads(response.read()).startswith("3.")


def test_mlflow_server_creates_experiments(mlflow_server: RunningService) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(mlflow_server.url)
    experiment_id = client.create_experiment("services-smoke")
    assert client.get_experiment(experiment_id).name == "services-smoke"
