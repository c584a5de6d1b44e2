"""prefect.yaml and the environment files: deployments, pools and parameters the flows accept."""

from __future__ import annotations

import json
import sys
from importlib.metadata import version
from pathlib import Path

import pytest
import yaml

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


KUBERNETES = Path(__file__).resolve().parent.parent / "deployments" / "kubernetes"


def _env_sources(container: dict) -> set[tuple[str, str]]:
    return {
        (kind, source[kind]["name"])
        for source in container.get("envFrom", [])
        for kind in ("configMapRef", "secretRef")
        if kind in source
    }


def test_kubernetes_manifests_give_every_ray_process_the_same_endpoints_and_token() -> None:
    documents = list(yaml.safe_load_all((KUBERNETES / "raycluster.yaml").read_text()))
    (cluster,) = [d for d in documents if d["kind"] == "RayCluster"]
    (endpoints,) = [d for d in documents if d["kind"] == "ConfigMap"]
    job = json.loads((KUBERNETES / "work-pool-base-job-template.json").read_text())
    flow_run_pod = job["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]
    groups = [cluster["spec"]["headGroupSpec"], *cluster["spec"]["workerGroupSpecs"]]
    containers = [c for g in groups for c in g["template"]["spec"]["containers"]]
    containers += flow_run_pod["containers"]

    # Ray refuses a client or worker of another version, and a cluster that checks tokens
    # refuses a client without one: every pod gets the pinned Ray, the endpoints and the token.
    assert cluster["spec"]["rayVersion"] == version("ray")
    assert endpoints["data"]["RAY_AUTH_MODE"] == "token"
    for container in containers:
        sources = _env_sources(container)
        assert ("configMapRef", "qmlops-endpoints") in sources, container["name"]
        assert ("secretRef", "qmlops-ray-auth") in sources, container["name"]
