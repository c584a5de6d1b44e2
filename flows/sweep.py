"""The ``sweep`` flow: many configurations in parallel, one parent MLflow run, one comparison.

``sweep`` expands the search space, opens the parent MLflow run and hands the configurations
to the nested flow ``sweep-configurations``, whose task runner is the one the parameters ask
for (threads, worker processes or Ray): it prepares each dataset once (split, encoder,
classical baselines) and fans out one ``train-configuration`` task per configuration.
``sweep`` then publishes the comparison (Prefect table artifact, MLflow CSV/JSON and figures)
and names the best configuration.
"""

from __future__ import annotations

import json
from typing import Any

from prefect import flow, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.futures import PrefectFuture, as_completed
from prefect.runtime import flow_run
from prefect.settings import get_current_settings

from qmlops.concurrency import available_cores, threads_per_training
from qmlops.config import (
    SWEEP_TRACKING,
    DeviceConfig,
    TrackingConfig,
    resolve_circuit,
    resolve_encoding,
    resolve_model_name,
)
from qmlops.errors import InputError
from qmlops.metrics import METRIC_NAMES
from qmlops.scheduling import dispatch, longest_first
from qmlops.search_space import (
    SearchSpace,
    SweepConfiguration,
    SweepExecution,
    expand,
    split_seed,
    with_device,
)
from qmlops.sweep_report import comparison_rows, outcome, select_best, selection_rule
from tasks.data import load_dataset, preprocess_features
from tasks.evaluation import evaluate_models
from tasks.ray_runner import sweep_ray
from tasks.runners import make_task_runner, shared_interpreter
from tasks.sweep import configuration_task, data_key_label, estimated_cost
from tasks.tracking import (
    TrackedRun,
    flow_run_tags,
    log_sweep_comparison,
    log_sweep_inputs,
    prepare_tracking,
    register_best_model,
    tracked_run,
)
from tasks.training import train_baselines


@task(name="expand-search-space", retries=0, cache_policy=NO_CACHE)
def expand_search_space(space: SearchSpace) -> list[SweepConfiguration]:
    """Every configuration of the space, validated (bad input fails here, before any run)."""
    return expand(space)


def _error_text(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


def _failure(state: Any) -> str:
    try:
        state.result(raise_on_failure=True)
    except BaseException as error:  # noqa: BLE001 - the sweep reports it and goes on
        return _error_text(error)
    return str(state.message or state.type)


def failure_of(future: PrefectFuture[Any]) -> str | None:
    """Why a finished configuration's task did not complete; ``None`` when it did.

    A worker process that dies (killed, out of memory) breaks the process runner's pool: its
    future and every one still pending raise ``BrokenProcessPool`` instead of giving a state.
    They are reported as failed configurations, like any other failure, and the sweep goes on
    to its comparison.
    """
    try:
        future.wait()  # done is not yet final: wait() records the final state
        state = future.state
    except Exception as error:  # noqa: BLE001 - the sweep reports it and goes on
        return _error_text(error)
    return None if state.is_completed() else _failure(state)


@flow(name="sweep-configurations", log_prints=True)
def sweep_configurations(
    configurations: list[SweepConfiguration],
    split_random_state: int,
    parent: TrackedRun,
    execution: SweepExecution,
    model_name: str | None,
) -> dict[str, Any]:
    """Prepare each dataset once, then train every configuration on this flow's task runner.

    The configurations start longest first (by :func:`tasks.sweep.estimated_cost`), at most
    ``max_parallel`` at a time (:mod:`qmlops.scheduling`), inside the process-wide settings of
    the runner (:func:`tasks.runners.shared_interpreter`).

    Returns:
        ``outcomes`` (one per configuration, in order) and ``baselines`` (test metrics of the
        classical baselines per data set).
    """
    threads = threads_per_training(execution.max_parallel, available_cores())
    # Worker processes and Ray workers have their process to themselves: each sets its own BLAS
    # limit; threads share this one (shared_interpreter).
    own_process = execution.runner != "threads"
    outcomes: dict[str, dict[str, Any]] = {}
    baselines: dict[str, dict[str, float]] = {}
    work: list[tuple[SweepConfiguration, tuple[Any, ...]]] = []
    costs: list[float] = []
    train_configuration = configuration_task(execution)
    with shared_interpreter(execution, threads):
        groups: dict[tuple[str, int | None], list[SweepConfiguration]] = {}
        for configuration in configurations:
            groups.setdefault(configuration.data_key, []).append(configuration)
        for group in groups.values():
            first = group[0]
            try:
                data = load_dataset(first.dataset)
                # Empty qubits, depths and angle ranges resolve as in a single training.
                resolved = []
                for c in group:
                    circuit = resolve_circuit(c.circuit, data.features.shape[1], data.n_classes)
                    dataset = resolve_encoding(c.dataset, circuit.qubits)
                    resolved.append(c.model_copy(update={"circuit": circuit, "dataset": dataset}))
                group = resolved
                first = group[0]
                label = data_key_label(first.dataset, first.circuit.qubits)
                prepared = preprocess_features(
                    data, first.dataset, first.circuit.qubits, split_random_state
                )
            except InputError as error:
                for configuration in group:
                    outcomes[configuration.name] = outcome(
                        configuration.name, configuration.varied, error=_error_text(error)
                    )
                continue
            evaluations = evaluate_models(train_baselines(prepared, split_random_state), prepared)
            baselines[label] = {
                f"{name}_test_{metric}": evaluation["metrics"][metric]
                for name, evaluation in evaluations.items()
                for metric in METRIC_NAMES
            }
            for configuration in group:
                costs.append(estimated_cost(configuration, prepared, data.n_classes))
                work.append((configuration, (configuration, data, prepared, evaluations, parent)))

        def start(item: tuple[SweepConfiguration, tuple[Any, ...]]) -> PrefectFuture[Any]:
            configuration, arguments = item
            return train_configuration.submit(
                *arguments,
                threads,
                own_process,
                resolve_model_name(model_name, configuration.dataset),
            )

        def first_finished(running: list[PrefectFuture[Any]]) -> PrefectFuture[Any]:
            return next(as_completed(running))

        ordered = [work[index] for index in longest_first(costs)]
        for (configuration, _), finished in dispatch(
            ordered, execution.max_parallel, start, first_finished
        ):
            failure = failure_of(finished)
            if failure is None:
                outcomes[configuration.name] = finished.result()
            else:
                print(f"configuration {configuration.name} failed: {failure}")
                outcomes[configuration.name] = outcome(
                    configuration.name, configuration.varied, error=failure
                )
    return {
        "outcomes": [outcomes[configuration.name] for configuration in configurations],
        "baselines": baselines,
    }


@task(name="publish-comparison", retries=0, cache_policy=NO_CACHE)
def publish_comparison(rows: list[dict[str, Any]], best: dict[str, Any] | None, rule: str) -> str:
    """Publish the comparison as a Prefect table artifact.

    Returns:
        The artifact's description (names the best configuration and the rule).
    """
    winner = "no configuration completed" if best is None else f"best: {best['configuration']}"
    description = f"qmlops sweep: {len(rows)} configurations; {winner} ({rule})"
    table = [{key: ("" if value is None else value) for key, value in row.items()} for row in rows]
    create_table_artifact(table=table, key="sweep-comparison", description=description)
    return description


@flow(name="sweep", log_prints=True)
def sweep(
    space: SearchSpace = SearchSpace(),  # noqa: B008 - frozen pydantic defaults
    execution: SweepExecution = SweepExecution(),  # noqa: B008
    tracking: TrackingConfig = SWEEP_TRACKING,
    device: DeviceConfig | None = None,
) -> dict[str, Any]:
    """Train every configuration of a search space in parallel and compare them.

    Args:
        space: Fixed settings, grid axes and random axes (see :mod:`qmlops.search_space`).
        execution: Task runner (threads, processes or Ray), parallelism and how the best is picked.
        tracking: MLflow experiment, tracking URI and the name the best model is registered
            under (when ``execution.register_best``).
        device: Device settings of every configuration where the space sets none (the space's
            ``device`` axis varies the device itself).

    Returns:
        The parent MLflow run id, the comparison rows, the best row and the rule used.
    """
    configurations = expand_search_space(with_device(space, device))
    api_url = get_current_settings().api.url
    # Fails fast on Ray without a server; else Ray starts in the background while the parent
    # run opens.
    with sweep_ray(execution, api_url) as ray_session:
        runner = make_task_runner(execution, api_url, ray_session)
        print(f"sweep: {len(configurations)} configurations, runner {execution.runner}")
        prepare_tracking(tracking.tracking_uri, tracking.experiment)
        with tracked_run(
            tracking.tracking_uri,
            tracking.experiment,
            run_name=str(flow_run.name or "sweep"),
            tags=flow_run_tags("sweep", **{"sweep.runner": execution.runner}),
        ) as parent:
            seed = split_seed(space)
            log_sweep_inputs(
                parent,
                {
                    "sweep": {
                        "configurations": len(configurations),
                        "split_seed": seed,
                        "axes": ",".join(configurations[0].varied) if configurations else "",
                    },
                    "execution": execution.model_dump(),
                    "fixed": dict(space.fixed),
                },
                json.dumps(space.model_dump(), indent=2),
            )
            if ray_session is not None:
                ray_session.wait()
            results = sweep_configurations.with_options(task_runner=runner)(
                configurations,
                seed,
                parent,
                execution,
                tracking.model_name,
            )
            if ray_session is not None:
                ray_session.stop()  # Ray shuts down while the comparison is published
            rows = comparison_rows(results["outcomes"])
            metric = execution.selection_metric
            best = select_best(rows, metric)
            rule = selection_rule(metric)
            log_sweep_comparison(
                parent, rows, results["outcomes"], best, metric, rule, results["baselines"]
            )
            publish_comparison(rows, best, rule)
            registered = None
            if best is not None and execution.register_best:
                [winner] = [c for c in configurations if c.name == best["configuration"]]
                registered = register_best_model(
                    parent,
                    best["mlflow_run_id"],
                    resolve_model_name(tracking.model_name, winner.dataset),
                )
            if best is not None:
                print(f"best configuration: {best['configuration']} {metric}={best[metric]:.3f}")
    return {
        "run_id": parent.run_id,
        "tracking_uri": parent.tracking_uri,
        "experiment_id": parent.experiment_id,
        "rows": rows,
        "best": best,
        "selection_metric": metric,
        "selection_rule": rule,
        "baselines": results["baselines"],
        "registered_version": None if registered is None else registered.registered_version,
    }


if __name__ == "__main__":
    sweep()
