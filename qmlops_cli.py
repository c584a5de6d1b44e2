"""The ``qmlops`` command line: ``train``, ``score``, ``sweep`` and ``devices``."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, get_args

from pydantic import ValidationError

from qmlops.config import (
    CircuitConfig,
    DatasetConfig,
    DeviceConfig,
    ScoringConfig,
    TrackingConfig,
    TrainingConfig,
)
from qmlops.search_space import SweepExecution

EXIT_BAD_INPUT = 2
EXIT_UNAVAILABLE = 3


def _choices(model: type, field: str) -> list[str]:
    return list(get_args(model.model_fields[field].annotation))  # type: ignore[attr-defined]


def _optional_int(text: str) -> int | None:
    return None if text.lower() in ("none", "exact", "") else int(text)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (options mirror the flow parameters)."""
    parser = argparse.ArgumentParser(
        prog="qmlops", description="Hybrid quantum-classical ML pipelines on Prefect and MLflow."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser(
        "train",
        help="train a variational quantum classifier (and classical baselines), tracked in MLflow",
        description="Run the `train` flow. Defaults reproduce `make demo` (iris, 4 qubits).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    data = train.add_argument_group("data")
    data.add_argument("--dataset", default="iris", choices=_choices(DatasetConfig, "name"))
    data.add_argument("--data", metavar="PATH", help="CSV or Parquet file (overrides --dataset)")
    data.add_argument("--target", metavar="COLUMN", help="label column of --data")
    data.add_argument("--test-size", type=float, default=0.2)
    data.add_argument("--validation-size", type=float, default=0.0)
    data.add_argument("--samples", type=int, default=200, help="size of synthetic datasets")
    circuit = train.add_argument_group("circuit")
    circuit.add_argument(
        "--qubits",
        type=int,
        default=None,
        help="default: 4, or 8 for more than 8 features (breast_cancer)",
    )
    circuit.add_argument(
        "--feature-map", default="z", choices=_choices(CircuitConfig, "feature_map")
    )
    circuit.add_argument("--feature-map-reps", type=int, default=1)
    circuit.add_argument(
        "--ansatz", default="efficient_su2", choices=_choices(CircuitConfig, "ansatz")
    )
    circuit.add_argument(
        "--reps",
        type=int,
        default=None,
        help="ansatz repetitions (default: 2 up to 4 qubits, 3 above)",
    )
    circuit.add_argument(
        "--entanglement", default="reverse_linear", choices=_choices(CircuitConfig, "entanglement")
    )
    optim = train.add_argument_group("training")
    optim.add_argument("--optimizer", default="adam", choices=_choices(TrainingConfig, "optimizer"))
    optim.add_argument("--maxiter", type=int, default=100)
    optim.add_argument("--learning-rate", type=float, default=0.1)
    optim.add_argument("--batch-size", type=_optional_int, default=48, help="'none': full batch")
    optim.add_argument(
        "--shots", type=_optional_int, default=None, help="default: exact; with --device: there"
    )
    optim.add_argument("--backend", default="auto", choices=_choices(TrainingConfig, "backend"))
    optim.add_argument("--seed", type=int, default=42)
    optim.add_argument(
        "--timeout", type=int, default=None, metavar="SECONDS", help="fail training after this"
    )
    optim.add_argument("--checkpoint-every", type=int, default=10, metavar="N")
    optim.add_argument(
        "--force",
        action="store_true",
        help="recompute cached steps and train from scratch (ignore checkpoints)",
    )
    track = train.add_argument_group("tracking")
    track.add_argument("--experiment", default="qmlops")
    track.add_argument("--model-name", default="qmlops-classifier")
    track.add_argument("--no-register", action="store_true", help="do not register the model")
    track.add_argument(
        "--tracking-uri",
        default=None,
        help="default: $MLFLOW_TRACKING_URI or sqlite:///./mlruns/mlflow.db",
    )
    _add_device_options(train)
    _add_devices_parser(commands)
    score = commands.add_parser(
        "score",
        help="score a CSV or Parquet file with a registered model (default: its champion)",
        description="Run the `score` flow: predictions and probabilities, recorded in MLflow.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    score.add_argument("--input", required=True, metavar="PATH", help="CSV or Parquet file")
    score.add_argument("--model-name", default="qmlops-classifier")
    score.add_argument("--version", type=int, default=None, help="default: the champion")
    score.add_argument("--output", metavar="PATH", help="also write predictions (.csv/.parquet)")
    score.add_argument("--experiment", default="qmlops-scoring")
    score.add_argument("--tracking-uri", default=None, help="default: as for train")
    _add_sweep_parser(commands)
    return parser


SWEEP_AXIS_OPTIONS: dict[str, tuple[str, Any]] = {
    # option dest: (space key, value type)
    "dataset": ("dataset", str),
    "qubits": ("qubits", int),
    "feature_map": ("feature_map", str),
    "ansatz": ("ansatz", str),
    "reps": ("reps", int),
    "entanglement": ("entanglement", str),
    "optimizer": ("optimizer", str),
    "learning_rate": ("learning_rate", float),
    "maxiter": ("maxiter", int),
    "batch_size": ("batch_size", _optional_int),
    "shots": ("shots", _optional_int),
    "seed": ("seed", int),
    "samples": ("samples", int),
    "device": ("device", str),
    "device_shots": ("device_shots", _optional_int),
    "train_on": ("train_on", str),
    "mitigation": ("mitigation", str),
}


def _add_sweep_parser(commands: Any) -> None:
    sweep = commands.add_parser(
        "sweep",
        help="train many configurations in parallel (threads or Ray) and compare them in MLflow",
        description="Run the `sweep` flow over a search space: a YAML/JSON file (fixed settings "
        "at the top, `grid:` axes, a `random:` section) and/or the axis options below. An axis "
        "option with one value fixes that setting, with several values it becomes a grid axis; "
        "it replaces what the file says about it.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    sweep.add_argument("--space", metavar="FILE", help="search space, .yaml/.yml or .json")
    axes = sweep.add_argument_group("axes (one value: fixed; several: grid)")
    for dest, (_, kind) in SWEEP_AXIS_OPTIONS.items():
        axes.add_argument(
            "--" + dest.replace("_", "-"), dest=dest, nargs="+", type=kind, metavar="V"
        )
    run = sweep.add_argument_group("execution")
    run.add_argument("--max-parallel", type=int, default=2, help="configurations at once")
    run.add_argument("--runner", choices=["threads", "ray"], default="threads")
    run.add_argument(
        "--ray-address",
        default=None,
        help="Ray cluster to join (default: $RAY_ADDRESS, else local)",
    )
    run.add_argument("--result-storage", default=None, help="folder or Prefect storage block slug")
    run.add_argument(
        "--select-by",
        default="test_accuracy",
        choices=_choices(SweepExecution, "selection_metric"),
        help="metric that picks the best configuration (highest wins)",
    )
    run.add_argument("--register-best", action="store_true", help="register the best model")
    track = sweep.add_argument_group("tracking")
    track.add_argument("--experiment", default="qmlops-sweeps")
    track.add_argument("--model-name", default="qmlops-classifier")
    track.add_argument("--tracking-uri", default=None)


def sweep_params_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """Build the validated ``sweep`` flow parameters from the command line.

    Raises:
        qmlops.errors.ConfigurationError: For a bad space file or axis values.
        pydantic.ValidationError: For out-of-range execution or tracking options.
    """
    from qmlops.search_space import expand, load_space, override_axes, parse_space

    document = load_space(args.space).model_dump() if args.space else {}
    if document:
        document = {
            **document.pop("fixed"),
            **{k: v for k, v in document.items() if v not in (None, {})},
        }
        if "random" in document:
            random = document["random"]
            document["random"] = {
                "samples": random["samples"],
                "seed": random["seed"],
                **{key: {spec["kind"]: spec["values"]} for key, spec in random["axes"].items()},
            }
    overrides = {
        space_key: getattr(args, dest)
        for dest, (space_key, _) in SWEEP_AXIS_OPTIONS.items()
        if getattr(args, dest) is not None
    }
    space = parse_space(override_axes(document, overrides))
    expand(space)  # every configuration is validated now, before a flow run starts
    return {
        "space": space,
        "execution": SweepExecution(
            runner=args.runner,
            max_parallel=args.max_parallel,
            ray_address=args.ray_address,
            result_storage=args.result_storage,
            selection_metric=args.select_by,
            register_best=args.register_best,
        ),
        "tracking": TrackingConfig(
            experiment=args.experiment,
            model_name=args.model_name,
            register_model=args.register_best,
            tracking_uri=args.tracking_uri,
        ),
    }


def _print_sweep_summary(result: dict[str, Any]) -> None:
    rows = result["rows"]
    metric = result["selection_metric"]
    columns = ["configuration", "status", *rows[0]] if rows else []
    columns = list(dict.fromkeys(c for c in columns if c not in ("mlflow_run_id", "error")))

    def cell(value: Any) -> str:
        return f"{value:.3f}" if isinstance(value, float) else ("" if value is None else str(value))

    print()
    _print_table(columns, [[cell(row.get(c)) for c in columns] for row in rows])
    for row in rows:
        if row["error"]:
            print(f"{row['configuration']} failed: {row['error']}")
    print()
    best = result["best"]
    if best is None:
        print("no configuration completed")
    else:
        print(f"best             {best['configuration']} ({metric} {best[metric]:.3f})")
        print(f"rule             {result['selection_rule']}")
        if result.get("registered_version"):
            print(f"registered as    version {result['registered_version']}")
    print(f"MLflow run id    {result['run_id']} (parent; one child run per configuration)")
    uri = result["tracking_uri"]
    print(f"open the UI      mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000")


def _main_sweep(args: argparse.Namespace) -> int:
    from qmlops.errors import InputError

    try:
        params = sweep_params_from_args(args)
    except (InputError, ValidationError) as error:
        print(f"qmlops: invalid sweep:\n{error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    from flows.heartbeats import without_flow_heartbeats
    from flows.sweep import sweep
    from tasks.ray_runner import RayUnavailableError
    from tasks.tracking import TrackingUnavailableError

    try:
        with without_flow_heartbeats():
            result = sweep(**params)
    except InputError as error:
        print(f"qmlops: {type(error).__name__}: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (RayUnavailableError, TrackingUnavailableError) as error:
        print(f"qmlops: {error}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    _print_sweep_summary(result)
    return 0 if result["best"] is not None else 1


def _default_qubits(args: argparse.Namespace) -> int:
    if args.qubits is not None:
        return int(args.qubits)
    return (
        8
        if args.data is None and args.dataset == "breast_cancer"
        else (2 if args.data is None and args.dataset in ("moons", "circles", "ad_hoc") else 4)
    )


def configs_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """Build the validated flow parameters.

    Raises:
        pydantic.ValidationError: For out-of-range or unknown values.
    """
    return {
        "dataset": DatasetConfig(
            name=args.dataset,
            path=args.data,
            target=args.target,
            n_samples=args.samples,
            test_size=args.test_size,
            validation_size=args.validation_size,
        ),
        "circuit": CircuitConfig(
            n_qubits=_default_qubits(args),
            feature_map=args.feature_map,
            feature_map_reps=args.feature_map_reps,
            ansatz=args.ansatz,
            ansatz_reps=args.reps,
            entanglement=args.entanglement,
        ),
        "training": TrainingConfig(
            optimizer=args.optimizer,
            maxiter=args.maxiter,
            learning_rate=args.learning_rate,
            batch_size=args.batch_size,
            # With a device, --shots are the device's; training stays exact unless on the device.
            shots=args.shots if args.device == "ideal" else None,
            backend=args.backend,
            random_state=args.seed,
            timeout_s=args.timeout,
            checkpoint_every=args.checkpoint_every,
        ),
        "tracking": TrackingConfig(
            experiment=args.experiment,
            model_name=args.model_name,
            register_model=not args.no_register,
            tracking_uri=args.tracking_uri,
        ),
        "device": device_config_from_args(args),
    }


# -- devices ---------------------------------------------------------------------------------


def _add_device_options(train: argparse.ArgumentParser) -> None:
    group = train.add_argument_group("device (see `qmlops devices`)")
    group.add_argument(
        "--device", default="ideal", help="also evaluate there: fake_manila, noise:depolarizing,..."
    )
    group.add_argument(
        "--train-on",
        default="ideal",
        choices=_choices(DeviceConfig, "train_on"),
        help="where to train",
    )
    group.add_argument(
        "--optimization-level", type=int, default=1, choices=[0, 1, 2, 3], help="transpiler"
    )
    group.add_argument("--mitigation", default="none", choices=_choices(DeviceConfig, "mitigation"))
    group.add_argument("--max-shots", type=int, default=None, help="refuse runs needing more")
    group.add_argument(
        "--max-qpu-seconds", type=float, default=None, help="refuse hardware runs above this"
    )
    group.add_argument("--one-qubit-error", type=float, default=0.001, help="noise:depolarizing")
    group.add_argument("--two-qubit-error", type=float, default=0.01, help="noise:depolarizing")
    group.add_argument("--readout-error", type=float, default=0.02, help="noise:depolarizing")


def device_config_from_args(args: argparse.Namespace) -> DeviceConfig:
    """The :class:`DeviceConfig` of ``qmlops train``'s device options (``--shots`` included).

    Raises:
        pydantic.ValidationError: For out-of-range or unknown values.
    """
    return DeviceConfig(
        device=args.device,
        shots=None if args.device == "ideal" else args.shots,
        train_on=args.train_on,
        optimization_level=args.optimization_level,
        mitigation=args.mitigation,
        max_shots=args.max_shots,
        max_qpu_seconds=args.max_qpu_seconds,
        one_qubit_error=args.one_qubit_error,
        two_qubit_error=args.two_qubit_error,
        readout_error=args.readout_error,
    )


def _add_devices_parser(commands: Any) -> None:
    devices = commands.add_parser(
        "devices",
        help="list the devices --device accepts (qubits, basis gates, source)",
        description="Devices: ideal, noise:depolarizing, IBM fake backends, ibm:<backend>.",
    )
    devices.add_argument("--source", choices=["ideal", "fake", "noise", "ibm"], help="only these")


def _main_devices(args: argparse.Namespace) -> int:
    from qmlops.devices import list_devices

    rows = [
        [
            d.name,
            "any" if d.n_qubits is None else str(d.n_qubits),
            ",".join(d.basis_gates) or "-",
            d.source,
        ]
        for d in list_devices()
        if args.source in (None, d.source)
    ]
    _print_table(["device", "qubits", "basis gates", "source"], rows)
    return 0


def _print_table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, ["-" * w for w in widths], *rows]:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))


def _print_summary(result: dict[str, Any]) -> None:
    from qmlops.metrics import METRIC_NAMES
    from qmlops.model_summary import summary_rows

    header = ["model", *METRIC_NAMES]
    rows = summary_rows({name: {"metrics": m} for name, m in result["metrics"].items()})
    print()
    _print_table(header, rows)
    print()
    print(f"training time    {result['fit_time_s']:.2f} s on the {result['backend']} engine")
    print(f"MLflow run id    {result['run_id']}")
    print(f"model            {result['model_uri']}")
    if result.get("registered_version"):
        print(f"registered as    {result['registered_model']} v{result['registered_version']}")
    if result.get("device"):
        device = result["device"]
        mitigated = device["mitigated_metrics"].get("accuracy")
        print(
            f"on {device['device']:<13} test accuracy {device['metrics']['accuracy']:.3f}"
            + ("" if mitigated is None else f" ({mitigated:.3f} with readout mitigation)")
            + f", {device['shots']} shots, depth {device['transpiled']['transpiled_depth']}"
        )
    uri = result["tracking_uri"]
    print(f"open the UI      mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000")


def score_configs_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """Build the validated parameters of the score flow.

    Raises:
        pydantic.ValidationError: For out-of-range or unknown values.
    """
    return {
        "scoring": ScoringConfig(
            input_path=args.input,
            model_name=args.model_name,
            model_version=args.version,
            output_path=args.output,
            experiment=args.experiment,
            tracking_uri=args.tracking_uri,
        )
    }


def _print_scored(result: dict[str, Any]) -> None:
    print(f"scored {result['n_rows']} rows with {result['model_uri']}")
    print(f"MLflow run id    {result['run_id']} ({result['predictions_artifact']})")
    if result["output_path"]:
        print(f"predictions      {result['output_path']}")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``qmlops`` command."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    args = build_parser().parse_args(argv)
    if args.command == "devices":
        return _main_devices(args)
    if args.command == "sweep":
        return _main_sweep(args)
    scoring = args.command == "score"
    try:
        params = score_configs_from_args(args) if scoring else configs_from_args(args)
    except ValidationError as error:
        print(f"qmlops: invalid options:\n{error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    from flows.heartbeats import without_flow_heartbeats
    from flows.score import score
    from flows.train import train
    from qmlops.errors import InputError
    from tasks.tracking import TrackingUnavailableError

    try:
        with without_flow_heartbeats():
            result = score(**params) if scoring else train(**params, force=args.force)
    except InputError as error:
        print(f"qmlops: {type(error).__name__}: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except TrackingUnavailableError as error:
        print(f"qmlops: {error}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    (_print_scored if scoring else _print_summary)(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
