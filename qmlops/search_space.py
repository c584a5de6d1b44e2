"""A sweep's parameters: the search space, its validated configurations, and how they run.

A space file holds fixed settings at the top, axes to vary under ``grid:`` (every combination
is run) and, optionally, a ``random:`` section with a sample count, a seed and one distribution
per axis (each sample draws every random axis; with a grid, every grid point gets every
sample)::

    dataset: moons
    qubits: 2
    maxiter: 10
    grid:
      ansatz: [real_amplitudes, efficient_su2]
      reps: [1, 2]
    random:
      samples: 4
      seed: 0
      learning_rate: {log_uniform: [0.01, 0.3]}
      shots: {choice: [null, 1024]}

Keys are the settings' names, the same as the command line's options (:data:`AXES`).
Distributions: ``choice`` (a list), ``uniform`` and ``log_uniform`` (``[low, high]``) and
``int_uniform`` (``[low, high]``, both included); a bare list means ``choice``.

Every configuration of one dataset and qubit count shares one train/test split, drawn with
``split_seed`` (default: ``seed`` when fixed, else 42), so configurations are compared on the
same test samples and the classical baselines are trained once per dataset; the ``seed`` axis
varies only the training (initial weights, mini-batches, shot noise).

Devices are axes too (:class:`~qmlops.config.DeviceConfig`): ``device: [ideal, fake_manila,
fake_perth]`` with ``device_shots: 1024`` evaluates every configuration on each device as well;
noise is varied through the device (``noise:depolarizing`` and its error rates).

How the configurations run (task runner, parallelism, the metric that picks the best) is
:class:`SweepExecution`; the order they start in comes from :mod:`qmlops.scheduling` and the
threads each may use from :mod:`qmlops.concurrency`.
"""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from qmlops.config import (
    CircuitConfig,
    DatasetConfig,
    DeviceConfig,
    TrainingConfig,
    describe_validation_error,
    setting_names,
)
from qmlops.errors import ConfigurationError
from qmlops.sweep_report import SelectionMetric

Scalar = str | int | float | bool | None

AXES: dict[str, tuple[str, str]] = setting_names()
"""Space keys (one per setting, the command line's option names) to ``(section, field)``."""

PLANNED_AXES = {
    "noise": "vary `device` instead (noise:depolarizing with its error rates, or fake_*)"
}
SPACE_KEYS = ("grid", "random", "split_seed")
MAX_CONFIGURATIONS = 1000
DEFAULT_SPLIT_SEED = 42


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, frozen=True, extra="forbid")


class Distribution(_Strict):
    """One random axis: how its values are drawn."""

    kind: Literal["choice", "uniform", "log_uniform", "int_uniform"] = Field(
        description="choice: one of `values`; uniform/log_uniform/int_uniform: in [low, high]."
    )
    values: list[Scalar] = Field(
        min_length=1, description="Choices, or [low, high] for the ranges."
    )


class RandomSearch(_Strict):
    """Random sampling: ``samples`` draws of every axis, reproducible from ``seed``."""

    samples: int = Field(8, ge=1, le=MAX_CONFIGURATIONS, description="Configurations drawn.")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="Seed of the draws.")
    axes: dict[str, Distribution] = Field(
        default_factory=dict, description="Axis name to distribution."
    )


class SearchSpace(_Strict):
    """A sweep's search space: fixed settings, grid axes and random axes (see module doc)."""

    fixed: dict[str, Scalar] = Field(
        default_factory=dict, description="Settings shared by every configuration."
    )
    grid: dict[str, list[Scalar]] = Field(
        default_factory=dict, description="Axes whose every combination is run."
    )
    random: RandomSearch | None = Field(None, description="Axes drawn at random.")
    split_seed: int | None = Field(
        None, ge=0, le=2**31 - 1, description="Seed of the shared split (default: seed or 42)."
    )


class SweepConfiguration(_Strict):
    """One point of the space, as validated flow parameters."""

    name: str = Field(description="Short unique name, e.g. `c003`.")
    varied: dict[str, Scalar] = Field(description="The values of the axes that vary.")
    dataset: DatasetConfig
    circuit: CircuitConfig
    training: TrainingConfig
    device: DeviceConfig = Field(default_factory=DeviceConfig)

    @property
    def data_key(self) -> tuple[str, int | None]:
        """Configurations with equal keys share the prepared data and the baselines."""
        return (self.dataset.model_dump_json(), self.circuit.n_qubits)


def _check_key(key: str, where: str) -> None:
    if key in PLANNED_AXES:
        raise ConfigurationError(f"{where}: {key!r} is not available: {PLANNED_AXES[key]}")
    if key not in AXES:
        named = [name for name, (_, field) in AXES.items() if field == key]
        if named:
            raise ConfigurationError(f"{where}: {key!r} is called {named[0]!r} here")
        raise ConfigurationError(
            f"{where}: unknown setting {key!r}; known: {', '.join(sorted(AXES))}"
        )


def _distribution(key: str, spec: Any) -> Distribution:
    if isinstance(spec, list):
        return Distribution(kind="choice", values=spec)
    if not isinstance(spec, dict) or len(spec) != 1:
        raise ConfigurationError(
            f"random.{key}: expected a list or one of {{choice|uniform|log_uniform|int_uniform: "
            f"[...]}}, got {spec!r}"
        )
    ((kind, values),) = spec.items()
    try:
        distribution = Distribution(kind=kind, values=values)
    except ValidationError as error:
        raise ConfigurationError(f"random.{key}: {error}") from None
    if kind != "choice":
        low, high = (values + [None, None])[:2] if isinstance(values, list) else (None, None)
        if (
            len(values) != 2
            or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
            or not low < high  # type: ignore[operator]
            or (kind == "log_uniform" and low <= 0)  # type: ignore[operator]
            or (kind == "int_uniform" and not all(isinstance(v, int) for v in values))
        ):
            raise ConfigurationError(
                f"random.{key}: {kind} needs [low, high] with low < high"
                + (" and low > 0" if kind == "log_uniform" else "")
                + (" as integers" if kind == "int_uniform" else "")
                + f", got {values!r}"
            )
    return distribution


def parse_space(document: dict[str, Any]) -> SearchSpace:
    """Turn a parsed space file into a :class:`SearchSpace`.

    Args:
        document: The file's mapping: fixed settings, ``grid``, ``random``, ``split_seed``.

    Returns:
        The search space.

    Raises:
        ConfigurationError: For unknown keys, empty axes or malformed distributions.
    """
    if not isinstance(document, dict):
        raise ConfigurationError("a search space must be a mapping of settings")
    fixed = {key: value for key, value in document.items() if key not in SPACE_KEYS}
    for key, value in fixed.items():
        _check_key(key, "fixed settings")
        if isinstance(value, list | dict):
            raise ConfigurationError(
                f"fixed setting {key!r} must be a single value; put lists under `grid:`"
            )
    grid = document.get("grid") or {}
    if not isinstance(grid, dict):
        raise ConfigurationError("`grid:` must map axis names to lists of values")
    for key, values in grid.items():
        _check_key(key, "grid")
        if not isinstance(values, list) or not values:
            raise ConfigurationError(f"grid.{key}: expected a non-empty list, got {values!r}")
    random = document.get("random")
    search = None
    if random is not None:
        if not isinstance(random, dict):
            raise ConfigurationError("`random:` must be a mapping")
        settings = {k: random[k] for k in ("samples", "seed") if k in random}
        axes = {}
        for key, spec in random.items():
            if key in ("samples", "seed"):
                continue
            _check_key(key, "random")
            axes[key] = _distribution(key, spec)
        try:
            search = RandomSearch(**settings, axes=axes)
        except ValidationError as error:
            raise ConfigurationError(f"random: {error}") from None
    named = [*fixed, *grid, *(search.axes if search else {})]
    targets = [AXES[key] for key in named]
    twice = sorted(
        {key for key, target in zip(named, targets, strict=True) if targets.count(target) > 1}
    )
    if twice:
        raise ConfigurationError(
            f"settings given twice (fixed, grid or random, under any name): {twice}"
        )
    try:
        return SearchSpace(
            fixed=fixed, grid=grid, random=search, split_seed=document.get("split_seed")
        )
    except ValidationError as error:
        raise ConfigurationError(f"invalid search space: {error}") from None


def load_space(path: str | Path) -> SearchSpace:
    """Read a YAML (``.yaml``/``.yml``) or JSON space file.

    Raises:
        ConfigurationError: If the file is missing, unreadable or not a valid space.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as error:
        raise ConfigurationError(f"cannot read search space {path}: {error}") from None
    try:
        document = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as error:
        raise ConfigurationError(f"{path} is not valid YAML/JSON: {error}") from None
    return parse_space(document)


def _draw(distribution: Distribution, rng: np.random.Generator) -> Scalar:
    values = distribution.values
    if distribution.kind == "choice":
        return values[int(rng.integers(len(values)))]
    low, high = float(values[0]), float(values[1])  # type: ignore[arg-type]
    if distribution.kind == "int_uniform":
        return int(rng.integers(int(low), int(high) + 1))
    if distribution.kind == "log_uniform":
        return float(math.exp(rng.uniform(math.log(low), math.log(high))))
    return float(rng.uniform(low, high))


def _normalise(key: str, value: Scalar) -> Scalar:
    # YAML and the CLI spell exact simulation as null, "exact" or "none".
    if key in ("shots", "batch_size", "device_shots", "class_weight") and isinstance(value, str):
        if value.lower() in ("exact", "none", "full", ""):
            return None
    return value


def _build(name: str, settings: dict[str, Scalar], varied: dict[str, Scalar]) -> Any:
    sections: dict[str, dict[str, Any]] = {
        "dataset": {},
        "circuit": {},
        "training": {},
        "device": {},
    }
    for key, value in settings.items():
        section, field = AXES[key]
        sections[section][field] = _normalise(key, value)
    try:
        return SweepConfiguration(
            name=name,
            varied=varied,
            dataset=DatasetConfig(**sections["dataset"]),
            circuit=CircuitConfig(**sections["circuit"]),
            training=TrainingConfig(**sections["training"]),
            device=DeviceConfig(**sections["device"]),
        )
    except ValidationError as error:
        described = ", ".join(f"{k}={v!r}" for k, v in varied.items()) or "fixed settings"
        raise ConfigurationError(
            f"configuration {name} ({described}) is invalid: {describe_validation_error(error)}"
        ) from None


def expand(space: SearchSpace) -> list[SweepConfiguration]:
    """All configurations of a space: the grid's product times the random draws.

    Identical configurations (a random draw repeating another) are kept once.

    Returns:
        Validated configurations named ``c000``, ``c001``, ... in a stable order.

    Raises:
        ConfigurationError: If a configuration is invalid or there are more than
            :data:`MAX_CONFIGURATIONS`.
    """
    grid_keys = list(space.grid)
    grid_points = [
        dict(zip(grid_keys, combination, strict=True))
        for combination in itertools.product(*(space.grid[k] for k in grid_keys))
    ]
    draws: list[dict[str, Scalar]] = [{}]
    if space.random is not None:
        rng = np.random.default_rng(space.random.seed)
        draws = [
            {key: _draw(dist, rng) for key, dist in space.random.axes.items()}
            for _ in range(space.random.samples)
        ]
    total = len(grid_points) * len(draws)
    if total > MAX_CONFIGURATIONS:
        raise ConfigurationError(
            f"the space has {total} configurations, over the limit of {MAX_CONFIGURATIONS}"
        )
    configurations: list[SweepConfiguration] = []
    seen: set[str] = set()
    for point in grid_points:
        for draw in draws:
            varied = {key: _normalise(key, value) for key, value in {**point, **draw}.items()}
            configuration = _build(f"c{len(configurations):03d}", {**space.fixed, **varied}, varied)
            identity = configuration.model_dump_json(exclude={"name", "varied"})
            if identity not in seen:
                seen.add(identity)
                configurations.append(configuration)
    return configurations


def split_seed(space: SearchSpace) -> int:
    """Seed of the train/test split every configuration shares."""
    if space.split_seed is not None:
        return space.split_seed
    value = space.fixed.get("seed")
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return DEFAULT_SPLIT_SEED


class SweepExecution(_Strict):
    """How a sweep runs: task runner, parallelism, how the best configuration is picked."""

    runner: Literal["threads", "processes", "ray"] = Field(
        "threads",
        description="threads: this process; processes: one worker process per parallel "
        "training (Prefect's ProcessPoolTaskRunner); ray: prefect-ray's RayTaskRunner.",
    )
    max_parallel: int = Field(2, ge=1, le=1024, description="Configurations trained at once.")
    ray_address: str | None = Field(
        None,
        description="Ray cluster to join (e.g. ray://head:10001); default $RAY_ADDRESS, else a "
        "local Ray started for the run.",
    )
    result_storage: str | None = Field(
        None,
        description="Where configuration results are persisted: a folder or a Prefect storage "
        "block slug (e.g. s3-bucket/qmlops-results); default: Prefect's local storage.",
    )
    selection_metric: SelectionMetric = Field(
        "test_accuracy", description="Metric that picks the best configuration (highest wins)."
    )
    register_best: bool = Field(False, description="Register the best configuration's model.")


def override_axes(document: dict[str, Any], overrides: dict[str, list[Scalar]]) -> dict[str, Any]:
    """Apply command-line values to a space document.

    One value fixes a setting, several values make it a grid axis; either replaces what the
    document said about that setting.

    Args:
        document: A parsed space file (not modified).
        overrides: Setting name to the values given on the command line.

    Returns:
        The new document.
    """
    result = {key: value for key, value in document.items() if key not in ("grid", "random")}
    grid = dict(document.get("grid") or {})
    random = dict(document.get("random") or {})
    for key, values in overrides.items():
        result.pop(key, None)
        grid.pop(key, None)
        random.pop(key, None)
        if len(values) == 1:
            result[key] = values[0]
        else:
            grid[key] = list(values)
    if grid:
        result["grid"] = grid
    if set(random) - {"samples", "seed"}:
        result["random"] = random
    return result


def with_device(space: SearchSpace, device: DeviceConfig | None) -> SearchSpace:
    """The space with ``device``'s settings fixed wherever the space does not set them.

    Only settings that differ from :class:`~qmlops.config.DeviceConfig`'s defaults are added.
    """
    if device is None:
        return space
    set_by_space = {*space.fixed, *space.grid, *(space.random.axes if space.random else {})}
    defaults = DeviceConfig()
    added: dict[str, Scalar] = {
        key: getattr(device, field)
        for key, (section, field) in AXES.items()
        if section == "device"
        and key not in set_by_space
        and getattr(device, field) != getattr(defaults, field)
    }
    return space.model_copy(update={"fixed": {**added, **space.fixed}})
