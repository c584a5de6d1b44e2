"""The ``qmlops`` command line: ``train``, ``score``, ``sweep`` and ``devices``.

The options are generated from the flow parameters' pydantic models (:mod:`qmlops.config`):
every default, bound, choice and description is written there once, and an option is named
like the setting it sets (:func:`qmlops.config.setting_name`). The command line adds what only
it needs: ``--force``, ``--verbose`` and sweep's ``--space``.

Bad input ends the command with one line naming the problem and exit status 2 (the
traceback stays in the Prefect run's logs, and on the console with ``--verbose``). Files named
on the command line are read wherever the user can read them; runs that come through a
server stay confined to the data root.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import annotated_types
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from qmlops.config import (
    RUN_SECTIONS,
    SECTIONS,
    SWEEP_TRACKING,
    describe_validation_error,
    setting_name,
)
from qmlops.search_space import SweepExecution

EXIT_BAD_INPUT = 2
EXIT_UNAVAILABLE = 3
NONE_WORDS = ("none", "exact", "full", "")
TRAIN_SECTIONS = ("dataset", "circuit", "training", "device", "tracking", "promotion")
"""The ``train`` flow's parameters, in the order ``qmlops train --help`` shows them."""
READ_PATHS = {"dataset.path", "scoring.input_path"}
"""Settings naming files the command reads (taken from the user's working directory)."""

# -- options generated from the models ------------------------------------------------------


def _none_or(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse_optional(text: str) -> Any:
        return None if text.lower() in NONE_WORDS else parse(text)

    parse_optional.__name__ = getattr(parse, "__name__", "value")
    return parse_optional


def _user_file(text: str) -> str:
    return str(Path(text).expanduser().absolute())


def _boolean(text: str) -> bool:
    if text.lower() in ("true", "yes", "1", "on"):
        return True
    if text.lower() in ("false", "no", "0", "off"):
        return False
    raise ValueError(text)


def _field_type(annotation: Any) -> tuple[Any, list[Any] | None, bool]:
    """The value type, the choices (for a Literal) and whether ``None`` is allowed."""
    optional = False
    if get_origin(annotation) in (Union, types.UnionType):
        members = [arg for arg in get_args(annotation) if arg is not type(None)]
        optional = len(members) < len(get_args(annotation))
        annotation = members[0]
    if get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    if get_origin(annotation) is Literal:
        choices = list(get_args(annotation))
        return type(choices[0]), choices, optional
    return annotation, None, optional


def _bounds(info: FieldInfo) -> str:
    words = {
        annotated_types.Ge: ">=",
        annotated_types.Gt: ">",
        annotated_types.Le: "<=",
        annotated_types.Lt: "<",
    }
    parts = [
        f"{symbol} {getattr(item, kind.__name__.lower())}"
        for item in info.metadata
        for kind, symbol in words.items()
        if isinstance(item, kind)
    ]
    return f" [{', '.join(parts)}]" if parts else ""


def _help(info: FieldInfo, default: Any) -> str:
    text = (info.description or "") + _bounds(info)
    if default is not None:
        text += f" (default: {default})"
    return text.replace("%", "%%")


def add_setting_options(
    group: Any,
    section: str,
    defaults: BaseModel,
    *,
    exclude: tuple[str, ...] = (),
    several: bool = False,
) -> None:
    """Add one ``--option`` per field of a model, named by :func:`setting_name`.

    Absent options stay out of the parsed namespace, so the model's own defaults apply.

    Args:
        group: An argparse parser or argument group.
        section: The flow parameter the model is (``dataset``, ``training``, ...).
        defaults: The values the flow uses when an option is absent (shown in ``--help``).
        exclude: Fields without an option.
        several: Accept one or more values (sweep axes).
    """
    for field, info in type(defaults).model_fields.items():
        if field in exclude:
            continue
        name = setting_name(section, field)
        flag = "--" + name.replace("_", "-")
        kind, choices, optional = _field_type(info.annotation)
        options: dict[str, Any] = {
            "dest": f"{section}.{field}",
            "default": argparse.SUPPRESS,
            "help": _help(info, getattr(defaults, field)),
        }
        if kind is bool and not several:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, **options)
            continue
        parse = _boolean if kind is bool else kind
        parse = _user_file if options["dest"] in READ_PATHS else parse
        options["type"] = _none_or(parse) if optional else parse
        if choices is not None:
            options["choices"] = choices + ([None] if optional else [])
            options["metavar"] = "{" + ",".join(map(str, choices)) + "}"
        else:
            options["metavar"] = name.upper()
        if several:
            options["nargs"] = "+"
            options["metavar"] = "V"
            if choices is not None:
                options["help"] = (
                    f"one or more of {', '.join(map(str, choices))}. " + (options["help"])
                )
        group.add_argument(flag, **options)


def given_settings(args: argparse.Namespace, section: str) -> dict[str, Any]:
    """The fields of one section given on the command line."""
    prefix = section + "."
    return {dest[len(prefix) :]: v for dest, v in vars(args).items() if dest.startswith(prefix)}


def build_section(args: argparse.Namespace, section: str, defaults: BaseModel) -> Any:
    """The validated model of a section: its defaults, overridden by the options given.

    Raises:
        pydantic.ValidationError: For out-of-range or inconsistent values.
    """
    values = {**defaults.model_dump(exclude_unset=True), **given_settings(args, section)}
    return type(defaults)(**values)


# -- the parser ----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (options generated from the flow parameters' models)."""
    parser = argparse.ArgumentParser(
        prog="qmlops", description="Hybrid quantum-classical ML pipelines on Prefect and MLflow."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser(
        "train",
        help="train a variational quantum classifier (and classical baselines), tracked in MLflow",
        description="Run the `train` flow. Defaults reproduce `make demo` (iris, qubits and "
        "depth from the data, registered as qmlops-iris).",
    )
    for section in TRAIN_SECTIONS:
        add_setting_options(train.add_argument_group(section), section, SECTIONS[section]())
    train.add_argument(
        "--force",
        action="store_true",
        help="recompute cached steps and train from scratch (ignore checkpoints)",
    )
    _add_verbose(train)
    score = commands.add_parser(
        "score",
        help="score a CSV or Parquet file with a registered model (default: its champion)",
        description="Run the `score` flow: predictions and probabilities, recorded in MLflow.",
    )
    add_setting_options(score, "scoring", SECTIONS["scoring"]())
    _add_verbose(score)
    _add_sweep_parser(commands)
    _add_devices_parser(commands)
    return parser


def _add_verbose(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="show tracebacks of bad input on the console"
    )


def _add_sweep_parser(commands: Any) -> None:
    sweep = commands.add_parser(
        "sweep",
        help="train many configurations in parallel (threads, processes or Ray) and compare them "
        "in MLflow",
        description="Run the `sweep` flow over a search space: a YAML/JSON file (fixed settings "
        "at the top, `grid:` axes, a `random:` section) and/or the setting options below (the "
        "same names as in the file and as `qmlops train`'s options). A setting with one value "
        "is fixed, with several values it becomes a grid axis; it replaces what the file says "
        "about it.",
    )
    sweep.add_argument("--space", metavar="FILE", help="search space, .yaml/.yml or .json")
    for section in RUN_SECTIONS:
        axes = sweep.add_argument_group(f"{section} (one value: fixed; several: grid)")
        add_setting_options(axes, section, SECTIONS[section](), several=True)
    add_setting_options(sweep.add_argument_group("execution"), "execution", SweepExecution())
    add_setting_options(
        sweep.add_argument_group("tracking"),
        "tracking",
        SWEEP_TRACKING,
        exclude=("register_model",),  # --register-best decides
    )
    _add_verbose(sweep)


# -- building the flow parameters ----------------------------------------------------------


def configs_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """Build the validated ``train`` flow parameters.

    Raises:
        pydantic.ValidationError: For out-of-range or unknown values.
    """
    params = {
        section: build_section(args, section, SECTIONS[section]()) for section in TRAIN_SECTIONS
    }
    training, device = params["training"], params["device"]
    if device.device != "ideal" and device.shots is None and training.shots is not None:
        # `--device X --shots N`: the shots are the device's; training stays exact unless it
        # runs on the device (which takes its shots from the device too).
        params["device"] = device.model_copy(update={"shots": training.shots})
        params["training"] = training.model_copy(update={"shots": None})
    return params


def score_configs_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """Build the validated parameters of the score flow.

    Raises:
        pydantic.ValidationError: For out-of-range or unknown values.
    """
    return {"scoring": build_section(args, "scoring", SECTIONS["scoring"]())}


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
        setting_name(section, field): values
        for section in RUN_SECTIONS
        for field, values in given_settings(args, section).items()
    }
    space = parse_space(override_axes(document, overrides))
    expand(space)  # every configuration is validated now, before a flow run starts
    execution = build_section(args, "execution", SweepExecution())
    tracking = build_section(args, "tracking", SWEEP_TRACKING)
    return {
        "space": space,
        "execution": execution,
        "tracking": tracking.model_copy(update={"register_model": execution.register_best}),
    }


# -- running and reporting -----------------------------------------------------------------


def _input_error_names() -> tuple[str, ...]:
    from qmlops.errors import InputError

    names, waiting = [], [InputError]
    while waiting:
        kind = waiting.pop()
        names.append(kind.__name__)
        waiting.extend(kind.__subclasses__())
    return tuple(f"{name}:" for name in names)


class _InputErrorFilter(logging.Filter):
    """Keeps bad-input failures (tracebacks and failed-state lines) off the console."""

    def __init__(self) -> None:
        super().__init__()
        from qmlops.errors import InputError

        self._input_error = InputError
        self._names = _input_error_names()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], self._input_error):
            return False
        if record.levelno >= logging.ERROR and record.name.startswith(
            ("prefect.flow_runs", "prefect.task_runs")
        ):
            message = record.getMessage()
            return not any(name in message for name in self._names)
        return True


@contextlib.contextmanager
def _console_without_input_tracebacks(verbose: bool) -> Iterator[None]:
    """Drop bad-input tracebacks from Prefect's console handlers (not from its API logs)."""
    if verbose:
        yield
        return
    from prefect.logging.handlers import PrefectConsoleHandler

    handlers = [
        handler
        for logger in (logging.getLogger(), logging.getLogger("prefect"))
        for handler in logger.handlers
        if isinstance(handler, PrefectConsoleHandler)
    ]
    quiet = _InputErrorFilter()
    for handler in handlers:
        handler.addFilter(quiet)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(quiet)


def _one_line(error: BaseException) -> str:
    return " ".join(f"{type(error).__name__}: {error}".split())


def _run(flow_call: Callable[[], dict[str, Any]], verbose: bool) -> dict[str, Any] | int:
    """Run a flow in the foreground; a bad input or an unreachable service is an exit code."""
    from flows.heartbeats import without_flow_heartbeats
    from qmlops.errors import InputError
    from tasks.data import files_anywhere
    from tasks.ray_runner import RayUnavailableError
    from tasks.tracking import TrackingUnavailableError

    try:
        with (
            without_flow_heartbeats(),
            files_anywhere(),
            _console_without_input_tracebacks(verbose),
        ):
            return flow_call()
    except InputError as error:
        print(f"qmlops: {_one_line(error)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (RayUnavailableError, TrackingUnavailableError) as error:
        print(f"qmlops: {error}", file=sys.stderr)
        return EXIT_UNAVAILABLE


def _print_table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, ["-" * w for w in widths], *rows]:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))


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


def _print_ui_hint(result: dict[str, Any]) -> None:
    uri = result["tracking_uri"]
    print(f"open the UI      mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000")
    # MLflow 3's UI opens in its GenAI view unless told (a sidebar toggle, or this parameter).
    run = f"#/experiments/{result['experiment_id']}/runs/{result['run_id']}"
    print(f"then             http://127.0.0.1:5000/{run}?workflowType=machine_learning")


def _print_summary(result: dict[str, Any]) -> None:
    from qmlops.metrics import METRIC_NAMES
    from qmlops.model_summary import summary_rows

    header = ["model", *METRIC_NAMES]
    rows = summary_rows({name: {"metrics": m} for name, m in result["metrics"].items()})
    print()
    _print_table(header, rows)
    print()
    print(f"training time    {result['fit_time_s']:.2f} s on the {result['backend']} engine")
    if result.get("training_cached"):
        print("training         from the cache (same data and settings; --force retrains)")
    elif result.get("resumed_from_iteration"):
        print(
            f"training         resumed from the checkpoint at iteration "
            f"{result['resumed_from_iteration']} (--force starts over)"
        )
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
    promotion = result.get("promotion") or {}
    if promotion.get("promotion.reason"):
        verdict = "promoted" if promotion.get("promotion.promote") == "True" else "not promoted"
        print(f"champion         {verdict}: {promotion['promotion.reason']}")
    _print_ui_hint(result)


def _print_scored(result: dict[str, Any]) -> None:
    print(f"scored {result['n_rows']} rows with {result['model_uri']}")
    print(f"MLflow run id    {result['run_id']} ({result['predictions_artifact']})")
    if result["output_path"]:
        print(f"predictions      {result['output_path']}")


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
    _print_ui_hint(result)


def _parameters(args: argparse.Namespace) -> dict[str, Any]:
    if args.command == "sweep":
        return sweep_params_from_args(args)
    if args.command == "score":
        return score_configs_from_args(args)
    return configs_from_args(args)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``qmlops`` command."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # The temporary server's 20 s start-up limit is too short on a busy machine.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    if os.environ.get("PREFECT_API_URL") == "":
        # Empty counts as unset: Prefect would try to send events to "" and fail every task.
        del os.environ["PREFECT_API_URL"]
    args = build_parser().parse_args(argv)
    if args.command == "devices":
        return _main_devices(args)
    from qmlops.errors import InputError

    try:
        params = _parameters(args)
    except ValidationError as error:
        print(f"qmlops: invalid options: {describe_validation_error(error, True)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except InputError as error:
        print(f"qmlops: {_one_line(error)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.command == "sweep":
        from flows.sweep import sweep

        swept = _run(lambda: sweep(**params), args.verbose)
        if isinstance(swept, int):
            return swept
        _print_sweep_summary(swept)
        return 0 if swept["best"] is not None else 1
    if args.command == "score":
        from flows.score import score

        scored = _run(lambda: score(**params), args.verbose)
        if isinstance(scored, int):
            return scored
        _print_scored(scored)
        return 0
    from flows.train import train

    trained = _run(lambda: train(**params, force=args.force), args.verbose)
    if isinstance(trained, int):
        return trained
    _print_summary(trained)
    return 0


if __name__ == "__main__":
    sys.exit(main())
