"""Sweep scaling: 8 configurations one after another, on 2 threads, 2 processes and a local Ray.

Runs the ``sweep`` flow four ways on the same search space against one real Prefect server
(started here on a free loopback port, stopped after) and a fresh MLflow SQLite store:

* ``sequential``: thread runner with ``max_parallel=1`` (one configuration at a time, each
  free to use every core);
* ``threads``: thread runner with ``max_parallel`` = the core count;
* ``processes``: Prefect's process-pool runner with ``max_parallel`` = the core count (its
  worker processes' start and imports included);
* ``ray``: prefect-ray's ``RayTaskRunner`` on a local Ray started by the flow (start-up
  included) with ``max_parallel`` = the core count.

Wall time is the whole flow run (space expansion, parent run, data preparation, baselines,
the fan-out, comparison and figures). Each mode is repeated ``--repeats`` times in turn and
the median is reported; the test metrics of every configuration must agree between modes
(same seeds, same numbers). After each round a host probe (:class:`HostProbe`) times two bare
trainings one after the other and two at once, in two processes and on two threads, without
Prefect or MLflow: the ceiling the host allowed at that moment. The figures go to
``benchmarks/RESULTS.md`` between the ``sweep_scaling`` markers; the rest of that file is kept.

Three workloads of 8 configurations, from short to long trainings, because the speed-up
depends on how much of a run the trainings are: ``small`` (per-configuration logging weighs
as much as the trainings), ``long`` (8 qubits, 500 Adam steps) and ``xl`` (the same space,
2000 steps: long enough for a local Ray's start-up to pay off).

Usage: ``.venv/bin/python benchmarks/sweep_scaling.py [--workload small|long|xl|all]
[--repeats N] [--maxiter N]``
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Literal

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
RESULTS = ROOT / "benchmarks" / "RESULTS.md"
BEGIN, END = "<!-- sweep_scaling:begin -->", "<!-- sweep_scaling:end -->"
MODES = ("sequential", "threads", "processes", "ray")
RUNNERS: dict[str, Literal["threads", "processes", "ray"]] = {
    "sequential": "threads",
    "threads": "threads",
    "processes": "processes",
    "ray": "ray",
}
METRICS = ("test_accuracy", "test_balanced_accuracy", "test_f1_macro", "test_roc_auc")


def space_document(maxiter: int, workload: str = "small") -> dict:
    """The 8 configurations of a workload (breast_cancer).

    ``small``: 2 ansätze x 2 depths x 2 seeds on 6 qubits. ``long`` and ``xl``:
    RealAmplitudes on 8 qubits, 2 depths x 2 learning rates x 2 seeds.
    """
    if workload in ("long", "xl"):
        return {
            "dataset": "breast_cancer",
            "qubits": 8,
            "ansatz": "real_amplitudes",
            "maxiter": maxiter,
            "grid": {"reps": [2, 3], "learning_rate": [0.05, 0.1], "seed": [1, 2]},
            "split_seed": 42,
        }
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


def run_mode(
    mode: str, cores: int, maxiter: int, store: Path, workload: str = "small"
) -> tuple[float, list[dict]]:
    from flows.heartbeats import without_flow_heartbeats
    from flows.sweep import sweep
    from qmlops.config import TrackingConfig
    from qmlops.search_space import SweepExecution, parse_space

    execution = SweepExecution(
        runner=RUNNERS[mode],
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
    with without_flow_heartbeats():  # as `qmlops sweep` runs it: no flow-run heartbeats
        result = sweep(
            space=parse_space(space_document(maxiter, workload)),
            execution=execution,
            tracking=tracking,
        )
    return time.perf_counter() - started, result["rows"]


HOST_PROBE_STEPS = 300


def bare_fit(seed: int) -> float:
    """One 8-qubit training of the long workload's kind, alone on one core: its wall time.

    Outside Prefect, MLflow and checkpoints, so that it measures only what the host gives a
    training.
    """
    from threadpoolctl import threadpool_limits

    from qmlops.classifier import QuantumClassifier
    from qmlops.data import load_builtin
    from qmlops.preprocessing import make_preprocessor, split_dataset

    dataset = load_builtin("breast_cancer")
    splits = split_dataset(dataset, test_size=0.2, random_state=42)
    features = make_preprocessor(splits.X_train.shape[1], 8, math.pi).fit_transform(splits.X_train)
    classifier = QuantumClassifier(
        ansatz="real_amplitudes",
        ansatz_reps=3,
        maxiter=HOST_PROBE_STEPS,
        random_state=seed,
        simulator_threads=1,
    )
    with threadpool_limits(limits=1):
        started = time.perf_counter()
        classifier.fit(features, splits.y_train)
        return time.perf_counter() - started


def bare_pair_on_threads(seeds: tuple[int, int]) -> float:
    """Wall time of two :func:`bare_fit` calls on two threads of one process.

    Under the switch interval the thread runner sets (:func:`tasks.runners.switch_interval`).
    """
    from concurrent.futures import ThreadPoolExecutor

    from tasks.runners import SHARED_INTERPRETER_SWITCH_INTERVAL_S, switch_interval

    started = time.perf_counter()
    with switch_interval(SHARED_INTERPRETER_SWITCH_INTERVAL_S), ThreadPoolExecutor(2) as pool:
        list(pool.map(bare_fit, seeds))
    return time.perf_counter() - started


class HostProbe:
    """What two trainings at once gain on this host right now, without any orchestration.

    Two bare trainings (:func:`bare_fit`) one after the other, then in two processes at once,
    then on two threads of one process, all in two pre-started worker processes. The sweep's
    speed-ups are bounded by these ratios, which vary with the host's load (the same pair ran
    1.59x to 2.04x in processes over one afternoon on this machine).
    """

    def __init__(self) -> None:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        # Spawned, not forked: this process already runs threads (Prefect's, MLflow's).
        self.pool = ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn"))
        list(self.pool.map(bare_fit, (0, 0)))  # imports and first-call costs
        self.ratios: dict[str, list[float]] = {"processes": [], "threads": []}

    def measure(self) -> None:
        sequential = self.pool.submit(bare_fit, 1).result() + self.pool.submit(bare_fit, 2).result()
        started = time.perf_counter()
        list(self.pool.map(bare_fit, (1, 2)))
        self.ratios["processes"].append(sequential / (time.perf_counter() - started))
        on_threads = self.pool.submit(bare_pair_on_threads, (1, 2)).result()
        self.ratios["threads"].append(sequential / on_threads)

    def summary(self) -> str:
        """One sentence with the medians (min–max) of both ratios."""
        from tasks.runners import SHARED_INTERPRETER_SWITCH_INTERVAL_S

        parts = [
            f"{kind} {statistics.median(values):.2f}x ({min(values):.2f}–{max(values):.2f})"
            for kind, values in self.ratios.items()
        ]
        return (
            f"Host ceiling, measured after each round: two bare {HOST_PROBE_STEPS}-step 8-qubit "
            "trainings at once against one after the other, no Prefect or MLflow: "
            + ", ".join(parts)
            + "; the threads at the thread runner's switch interval, "
            + f"{SHARED_INTERPRETER_SWITCH_INTERVAL_S * 1e3:g} ms."
        )

    def close(self) -> None:
        self.pool.shutdown()


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


def write_results(header: list[str], subsections: dict[str, list[str]]) -> str:
    """Write the sweep section of RESULTS.md; workloads not run this time keep their tables.

    Returns:
        The section as written.
    """
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    kept: dict[str, list[str]] = {}
    if BEGIN in text and END in text:
        previous = text.split(BEGIN, 1)[1].split(END, 1)[0]
        current = None
        for line in previous.strip("\n").splitlines():
            if line.startswith("### "):
                current = line[4:].split(":", 1)[0]
            if current is not None:
                kept.setdefault(current, []).append(line)
    merged = {**kept, **subsections}
    body = [line for name in WORKLOADS if name in merged for line in merged[name]]
    section = "\n".join(header + body).rstrip()
    block = f"{BEGIN}\n{section}\n{END}"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + block + rest.split(END, 1)[1]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    RESULTS.write_text(text)
    return section


WORKLOADS = {
    # name: (description, default Adam steps)
    "small": ("breast_cancer, 6 qubits, 2 ansätze x 2 depths x 2 seeds", 100),
    "long": ("breast_cancer, 8 qubits, RealAmplitudes, 2 depths x 2 learning rates x 2 seeds", 500),
    "xl": ("the long workload's space with 4x the steps", 2000),
}
# Pause before each timed sweep: a flow run created just after another ended can meet
# "database is locked" on Prefect's SQLite server and wait about 2 s for the client's retry
# (PrefectHQ/prefect#18934); every mode starts settled.
SETTLE_SECONDS = 1.0


def measure(
    workload: str, maxiter: int, repeats: int, cores: int, folder: Path, host: HostProbe
) -> tuple[dict[str, list[float]], dict[str, list[dict]]]:
    """Wall times per mode (modes alternate within each repeat) and the last rows per mode.

    The host probe runs once after each round of the modes.
    """
    times: dict[str, list[float]] = {mode: [] for mode in MODES}
    rows_by_mode: dict[str, list[dict]] = {}
    for repeat in range(repeats):
        for mode in MODES:
            time.sleep(SETTLE_SECONDS)
            seconds, rows = run_mode(mode, cores, maxiter, folder, workload)
            times[mode].append(seconds)
            rows_by_mode[mode] = rows
            print(f"{workload} [{repeat + 1}/{repeats}] {mode}: {seconds:.1f} s", flush=True)
        host.measure()
        print(f"{workload} [{repeat + 1}/{repeats}] host: {host.ratios}", flush=True)
    return times, rows_by_mode


def workload_section(
    workload: str,
    maxiter: int,
    cores: int,
    times: dict[str, list[float]],
    rows_by_mode: dict[str, list[dict]],
    measured: str,
) -> tuple[list[str], list[str]]:
    """Table lines of one workload, and the problems found comparing the modes' metrics."""
    problems = check_identical(rows_by_mode)
    median = {mode: statistics.median(values) for mode, values in times.items()}
    fits = {
        mode: sum(row["training_time_s"] or 0.0 for row in rows)
        for mode, rows in rows_by_mode.items()
    }
    lines = [
        f"### {workload}: {WORKLOADS[workload][0]}, Adam {maxiter} steps",
        "",
        measured,
        "",
        "| mode | max parallel | wall time s, median (min–max) | speed-up over sequential "
        "| sum of the 8 `fit` times, last run |",
        "| --- | --- | --- | --- | --- |",
    ]
    for mode in MODES:
        parallel = 1 if mode == "sequential" else cores
        lines.append(
            f"| {mode} | {parallel} | {median[mode]:.1f} ({min(times[mode]):.1f}–"
            f"{max(times[mode]):.1f}) | {median['sequential'] / median[mode]:.2f}x "
            f"| {fits[mode]:.1f} s |"
        )
    lines += [
        "",
        "A sum of `fit` times above the sequential one is each training running slower while "
        "another runs beside it. Test metrics identical across the modes: "
        + ("yes." if not problems else "NO: " + "; ".join(problems[:5])),
        "",
    ]
    return lines, problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="runs per mode (median kept)")
    parser.add_argument(
        "--maxiter", type=int, default=None, help="Adam steps (default: the workload's)"
    )
    parser.add_argument("--workload", choices=(*WORKLOADS, "all"), default="all")
    parser.add_argument("--no-write", action="store_true", help="print, do not touch RESULTS.md")
    args = parser.parse_args()
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("MPLBACKEND", "Agg")
    os.environ.pop("RAY_ADDRESS", None)
    from qmlops.concurrency import available_cores

    cores = available_cores()
    import services

    workloads = list(WORKLOADS) if args.workload == "all" else [args.workload]
    subsections: dict[str, list[str]] = {}
    all_problems: list[str] = []
    with tempfile.TemporaryDirectory() as folder, services.prefect_server(Path(folder)) as server:
        port = int(server.url.rsplit(":", 1)[1].split("/")[0])
        os.environ.update(services.prefect_server_env(Path(folder) / "client-home", port))
        # Untimed warm-up: first imports and the first flow run's one-off costs.
        run_mode("sequential", cores, 2, Path(folder), "small")
        for workload in workloads:
            maxiter = args.maxiter or WORKLOADS[workload][1]
            load_before = os.getloadavg()[0]
            started = time.strftime("%Y-%m-%d %H:%M", time.gmtime())
            host = HostProbe()
            try:
                times, rows_by_mode = measure(
                    workload, maxiter, args.repeats, cores, Path(folder), host
                )
            finally:
                host.close()
            measured = (
                f"Measured {started}–{time.strftime('%H:%M UTC', time.gmtime())}, "
                f"{args.repeats} run(s) per mode; load average {load_before:.1f} before, "
                f"{os.getloadavg()[0]:.1f} after. {host.summary()}"
            )
            lines, problems = workload_section(
                workload, maxiter, cores, times, rows_by_mode, measured
            )
            subsections[workload] = lines
            all_problems += problems
        from prefect.logging.handlers import APILogHandler

        APILogHandler().flush()  # ship the run logs before the server stops
    header = [
        "## Sweep scaling (`benchmarks/sweep_scaling.py`)",
        "",
        "8 configurations per workload, whole `sweep` flow runs against a local Prefect server, "
        f"MLflow SQLite store. {cores} cores, Python {platform.python_version()}, modes "
        "alternating, median wall time; each run starts "
        f"{SETTLE_SECONDS:.0f} s after the previous one, after one untimed warm-up sweep. "
        "`sequential`: one configuration at a time, each free to use every core; `threads`: the "
        f"thread runner, {cores} at once, one core each; `processes`: Prefect's process-pool "
        f"runner, {cores} worker processes (their start and imports included); `ray`: a local Ray "
        "started by the flow (its start and its workers' imports included). A run of one workload "
        "(`--workload NAME`) replaces that workload's table and keeps the others.",
        "",
    ]
    if args.no_write:
        print("\n".join(header + [line for lines in subsections.values() for line in lines]))
    else:
        print(write_results(header, subsections))
    return 1 if all_problems else 0


if __name__ == "__main__":
    sys.exit(main())
