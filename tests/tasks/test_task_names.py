"""Every Prefect task and flow is named after its function, in kebab case."""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

from prefect import Flow, Task

ROOT = Path(__file__).resolve().parents[2]
# Loading the pyfunc model file registers a model with MLflow: it declares no task.
SKIPPED = {"tasks.tracking.pyfunc_model"}


def _modules() -> list[str]:
    names = []
    for package in ("tasks", "tasks.tracking", "flows"):
        folder = ROOT / package.replace(".", "/")
        names += [f"{package}.{info.name}" for info in pkgutil.iter_modules([str(folder)])]
    return [name for name in names if name not in SKIPPED]


def test_task_and_flow_names_are_their_function_names() -> None:
    found = {}
    for module_name in _modules():
        module = importlib.import_module(module_name)
        for attribute, value in vars(module).items():
            if isinstance(value, Task | Flow) and value.fn.__module__ == module_name:
                found[f"{module_name}.{attribute}"] = value.name
    assert len(found) > 25  # the scan sees the tasks
    assert {
        path: name
        for path, name in found.items()
        if name != path.rsplit(".", 1)[1].replace("_", "-")
    } == {}
