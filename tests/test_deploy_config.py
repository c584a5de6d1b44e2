"""prefect.yaml and the environment files: deployments, pools and parameters the flows accept."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "deployments"))
import deploy  # noqa: E402


@pytest.mark.parametrize("environment", [None, "dev", "prod"])
def test_every_deployment_has_valid_parameters(environment: str | None) -> None:
    config = deploy.load_config(environment)
    by_name = {d["name"]: d for d in config["deployments"]}
    assert set(by_name) >= {"train-nightly", "score-batch"}
    assert {d["work_pool"]["name"] for d in by_name.values()} == {"qmlops-local"}
    assert by_name["train-nightly"]["schedules"][0]["cron"] == "0 2 * * *"
    assert not by_name["score-batch"]["schedules"]
    deploy.validate_parameters(config)  # raises SystemExit naming a bad field


def test_environment_overrides_merge_field_by_field() -> None:
    dev = {d["name"]: d for d in deploy.load_config("dev")["deployments"]}
    training = dev["train-nightly"]["parameters"]["training"]
    assert training["maxiter"] == 20
    assert training["optimizer"] == "adam"  # kept from prefect.yaml
    assert dev["train-nightly"]["schedules"][0]["active"] is False


def test_an_out_of_range_override_fails_before_deploying() -> None:
    config = deploy.load_config(None)
    config["deployments"][0] = deploy.merge(
        config["deployments"][0], {"parameters": {"training": {"maxiter": 0}}}
    )
    with pytest.raises(SystemExit, match=r"training\.maxiter"):
        deploy.validate_parameters(config)


def test_an_unknown_environment_is_refused() -> None:
    with pytest.raises(SystemExit, match="unknown environment"):
        deploy.load_config("nowhere")
