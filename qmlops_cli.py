"""The ``qmlops`` command line: ``qmlops train`` runs the training flow."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, get_args

from pydantic import ValidationError

from qmlops.config import CircuitConfig, DatasetConfig, TrackingConfig, TrainingConfig

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
    circuit.add_argument("--reps", type=int, default=2, help="ansatz repetitions")
    circuit.add_argument(
        "--entanglement", default="reverse_linear", choices=_choices(CircuitConfig, "entanglement")
    )
    optim = train.add_argument_group("training")
    optim.add_argument("--optimizer", default="adam", choices=_choices(TrainingConfig, "optimizer"))
    optim.add_argument("--maxiter", type=int, default=100)
    optim.add_argument("--learning-rate", type=float, default=0.1)
    optim.add_argument("--batch-size", type=_optional_int, default=48, help="'none': full batch")
    optim.add_argument("--shots", type=_optional_int, default=None, help="default: exact")
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
    return parser


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
            shots=args.shots,
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
    }


def _print_summary(result: dict[str, Any]) -> None:
    from qmlops.metrics import METRIC_NAMES
    from qmlops.model_summary import summary_rows

    header = ["model", *METRIC_NAMES]
    rows = summary_rows({name: {"metrics": m} for name, m in result["metrics"].items()})
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    print()
    for row in [header, ["-" * w for w in widths], *rows]:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))
    print()
    print(f"training time    {result['fit_time_s']:.2f} s on the {result['backend']} engine")
    print(f"MLflow run id    {result['run_id']}")
    print(f"model            {result['model_uri']}")
    if result.get("registered_version"):
        print(f"registered as    {result['registered_model']} v{result['registered_version']}")
    uri = result["tracking_uri"]
    print(f"open the UI      mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``qmlops`` command."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    args = build_parser().parse_args(argv)
    try:
        params = configs_from_args(args)
    except ValidationError as error:
        print(f"qmlops: invalid options:\n{error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    from flows.train import train
    from qmlops.errors import InputError
    from tasks.tracking import TrackingUnavailableError

    try:
        result = train(**params, force=args.force)
    except InputError as error:
        print(f"qmlops: {type(error).__name__}: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except TrackingUnavailableError as error:
        print(f"qmlops: {error}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    _print_summary(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
