"""Sweep scaling: 8 configurations one after another, on 2 threads and on a local Ray.

Runs the ``sweep`` flow three ways on the same search space against one real Prefect server
(started here on a free loopback port, stopped after) and a fresh MLflow SQLite store:

* ``sequential``: thread runner with ``max_parallel=1`` (one configuration at a time, each
  free to use every core);
* ``threads``: thread runner with ``max_parallel`` = the core count;
* ``ray``: prefect-ray's ``RayTaskRunner`` on a local Ray started by the flow (start-up
  included) with ``max_parallel`` = the core count.

Wall time is the whole flow run (space expansion, parent run, data preparation, baselines,
the fan-out, comparison and figures). Each mode is repeated ``--repeats`` times in turn and
the median is reported; the test metrics of every configuration must agree between modes
(same seeds, same numbers). The figures go to ``benchmarks/RESULTS.md`` between the
``sweep_scaling`` markers; the rest of that file is kept.

Usage: ``.venv/bin/python benchmarks/sweep_scaling.py [--repeats N] [--maxiter N]``
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
RESULTS = ROOT / "benchmarks" / "RESULTS.md"
BEGIN, END = "<!-- sweep_scaling:begin -->", "<!-- sweep_scaling:end -->"
METRICS = ("test_accuracy", "test_balanced_accuracy", "test_f1_macro", "test_roc_auc")


def space_document(maxiter: int) -> dict:
    """8 configurations: 2 ansätze x 2 depths x 2 seeds, breast_cancer on 6 qubits."""
    return {
        "dataset": "breast_cancer",
        "qubits": 6,
        "maxiter": maxiter,
        "grid": {
            "ansatz": ["efficient_su2", "real_amplitudes"],
            "reps": [2, 3],
            "seed": [1, 2],
        },
        "split_seed": 42,
    }


def run_mode(mode: str, cores: int, maxiter: int, store: Path) -> tuple[float, list[dict]]:
    import tempfile

    from flows.sweep import sweep
    from qmlops.config import TrackingConfig
    from qmlops.sweep import SweepExecution, parse_space

    execution = SweepExecution(
        runner="ray" if mode == "ray" else "threads",
        max_parallel=1 if mode == "sequential" else cores,
    )
    tracking = TrackingConfig(
        experiment=f"bench-{mode}",
        tracking_uri=f"sqlite:///{store / 'mlflow.db'}",
        register_model=False,
    )
    # Every run trains from scratch: a checkpoint folder left by an earlier run would let the
    # trainings resume at their last iteration (Ray's workers inherit this when Ray starts).
    os.environ["QMLOPS_CHECKPOINT_DIR"] = tempfile.mkdtemp(prefix="checkpoints-", dir=store)
    started = time.perf_counter()
    result = sweep(
        space=parse_space(space_document(maxiter)), execution=execution, tracking=tracking
    )
    return time.perf_counter() - started, result["rows"]


def check_identical(rows_by_mode: dict[str, list[dict]]) -> list[str]:
    reference_mode, reference = next(iter(rows_by_mode.items()))
    problems = []
    for mode, rows in rows_by_mode.items():
        for ref, row in zip(reference, rows, strict=True):
            if row["status"] != "completed":
                problems.append(f"{mode} {row['configuration']}: {row['error']}")
            for metric in METRICS:
                if row[metric] != ref[metric]:
                    problems.append(
                        f"{row['configuration']} {metric}: {mode} {row[metric]} vs "
                        f"{reference_mode} {ref[metric]}"
                    )
    return problems


def write_results(section: str) -> None:
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    block = f"{BEGIN}\n{section.rstrip()}\n{END}"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + block + rest.split(END, 1)[1]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    RESULTS.write_text(text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="runs per mode (median kept)")
    parser.add_argument("--maxiter", type=int, default=100, help="Adam steps per configuration")
    parser.add_argument("--no-write", action="store_true", help="print, do not touch RESULTS.md")
    args = parser.parse_args()
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("MPLBACKEND", "Agg")
    os.environ.pop("RAY_ADDRESS", None)
    from qmlops.sweep import available_cores

    cores = available_cores()
    import services

    modes = ("sequential", "threads", "ray")
    times: dict[str, list[float]] = {mode: [] for mode in modes}
    rows_by_mode: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory() as folder, services.prefect_server(Path(folder)) as server:
        port = int(server.url.rsplit(":", 1)[1].split("/")[0])
        os.environ.update(services.prefect_server_env(Path(folder) / "client-home", port))
        load_before = os.getloadavg()
        for repeat in range(args.repeats):
            for mode in modes:
                seconds, rows = run_mode(mode, cores, args.maxiter, Path(folder))
                times[mode].append(seconds)
                rows_by_mode[mode] = rows
                print(f"[{repeat + 1}/{args.repeats}] {mode}: {seconds:.1f} s", flush=True)
        load_after = os.getloadavg()
        from prefect.logging.handlers import APILogHandler

        APILogHandler().flush()  # ship the run logs before the server stops
    problems = check_identical(rows_by_mode)
    median = {mode: statistics.median(values) for mode, values in times.items()}
    training = sum(row["training_time_s"] or 0.0 for row in rows_by_mode["sequential"])
    lines = [
        "## Sweep scaling (`benchmarks/sweep_scaling.py`)",
        "",
        f"8 configurations (breast_cancer, 6 qubits, Adam {args.maxiter} steps; 2 ansätze x "
        "2 depths x 2 seeds), whole `sweep` flow runs against a local Prefect server, MLflow "
        f"SQLite store. {cores} cores, Python {platform.python_version()}, "
        f"{args.repeats} run(s) per mode, median wall time; load average "
        f"{load_before[0]:.1f} before, {load_after[0]:.1f} after "
        f"({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}).",
        "",
        "| mode | max parallel | wall time (s) | speed-up over sequential |",
        "| --- | --- | --- | --- |",
    ]
    for mode in modes:
        parallel = 1 if mode == "sequential" else cores
        lines.append(
            f"| {mode} | {parallel} | {median[mode]:.1f} | "
            f"{median['sequential'] / median[mode]:.2f}x |"
        )
    lines += [
        "",
        f"Sum of the 8 `fit` times (sequential run): {training:.1f} s. The Ray time includes "
        "starting the local Ray and its workers. Test metrics identical across the three modes: "
        + ("yes." if not problems else "NO: " + "; ".join(problems[:5])),
        "",
    ]
    section = "\n".join(lines)
    print(section)
    if not args.no_write:
        write_results(section)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
