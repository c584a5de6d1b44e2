"""Deploy every deployment in ``prefect.yaml``, optionally with an environment's parameters.

Usage (from the project root, ``PREFECT_API_URL`` pointing at the server)::

    .venv/bin/python deployments/deploy.py              # prefect.yaml as it is
    .venv/bin/python deployments/deploy.py --env dev    # + deployments/environments/dev.yaml

An environment file overrides, per deployment name, keys of that deployment (``parameters``
merged key by key, down to single fields). The merged parameters are validated against the
flows' pydantic models before anything is sent, the work pools are created when missing
(type ``process``), then ``prefect deploy --all`` runs without prompts.
"""

from __future__ import annotations

import argparse
import copy
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

PROJECT_DIR = Path(__file__).resolve().parent.parent
ENVIRONMENTS_DIR = Path(__file__).resolve().parent / "environments"
MERGED_DIR = PROJECT_DIR / ".qmlops" / "deploy"


def _prefect() -> str:
    return str(Path(sys.executable).with_name("prefect"))


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge ``override`` into a copy of ``base`` (mappings merge, other values replace)."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def load_config(environment: str | None) -> dict[str, Any]:
    """``prefect.yaml`` with an environment's overrides applied.

    Raises:
        SystemExit: For an unknown environment or an override naming no deployment.
    """
    config: dict[str, Any] = yaml.safe_load((PROJECT_DIR / "prefect.yaml").read_text())
    if environment is None:
        return config
    path = ENVIRONMENTS_DIR / f"{environment}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in ENVIRONMENTS_DIR.glob("*.yaml"))
        raise SystemExit(f"deploy: unknown environment {environment!r}; known: {known}")
    overrides: dict[str, Any] = yaml.safe_load(path.read_text()).get("deployments") or {}
    by_name = {d["name"]: d for d in config["deployments"]}
    unknown = sorted(set(overrides) - set(by_name))
    if unknown:
        raise SystemExit(f"deploy: {path.name} names unknown deployments {unknown}")
    config["deployments"] = [merge(d, overrides.get(d["name"], {})) for d in config["deployments"]]
    return config


def validate_parameters(config: dict[str, Any]) -> None:
    """Validate each deployment's parameters against its flow's signature (pydantic models).

    Raises:
        SystemExit: Naming the deployment and the invalid fields.
    """
    from prefect.flows import load_flow_from_entrypoint

    for deployment in config["deployments"]:
        flow: Any = load_flow_from_entrypoint(str(PROJECT_DIR / deployment["entrypoint"]))
        try:
            flow.validate_parameters(deployment.get("parameters") or {})
        except Exception as error:  # Prefect wraps pydantic's error in its own type
            raise SystemExit(
                f"deploy: invalid parameters for {deployment['name']}: {error}"
            ) from None


def ensure_work_pools(config: dict[str, Any], env: dict[str, str]) -> None:
    """Create every referenced work pool that does not exist yet (type ``process``)."""
    pools = {d["work_pool"]["name"] for d in config["deployments"] if d.get("work_pool")}
    for pool in sorted(pools):
        found = subprocess.run(
            [_prefect(), "work-pool", "inspect", pool], env=env, capture_output=True, check=False
        )
        if found.returncode != 0:
            subprocess.run(
                [_prefect(), "work-pool", "create", pool, "--type", "process"], env=env, check=True
            )


def deploy(environment: str | None = None, env: dict[str, str] | None = None) -> None:
    """Validate, create missing work pools and run ``prefect deploy --all``.

    Args:
        environment: Name of a file in ``deployments/environments`` (None: prefect.yaml only).
        env: Environment of the Prefect commands (default: this process's).
    """
    env = dict(os.environ if env is None else env)
    env.setdefault("QMLOPS_PROJECT_DIR", str(PROJECT_DIR))
    config = load_config(environment)
    validate_parameters(config)
    ensure_work_pools(config, env)
    command = [_prefect(), "--no-prompt", "deploy", "--all"]
    if environment is not None:
        MERGED_DIR.mkdir(parents=True, exist_ok=True)
        merged = MERGED_DIR / f"prefect.{environment}.yaml"
        merged.write_text(yaml.safe_dump(config, sort_keys=False))
        command += ["--prefect-file", str(merged)]
    subprocess.run(command, env=env, cwd=PROJECT_DIR, check=True)


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", help="environment file in deployments/environments (no suffix)")
    args = parser.parse_args(argv)
    if not os.environ.get("PREFECT_API_URL"):
        print("deploy: set PREFECT_API_URL (e.g. run `make serve` first)", file=sys.stderr)
        return 2
    deploy(args.env)
    return 0


if __name__ == "__main__":
    sys.exit(main())
