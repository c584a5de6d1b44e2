"""Training speed: qiskit-machine-learning's VQC against our QuantumClassifier, side by side.

Every case trains the same model (the same circuits, readout, data, initial point, optimizer and
evaluation budget) with:

* ``VQC default``: qiskit-machine-learning's ``VQC`` as users run it (its default sampler);
* ``VQC + Aer sampler``: the same with qiskit-aer's ``SamplerV2`` (1024 shots, its default);
* ``ours, auto``: :class:`qmlops.QuantumClassifier` with ``backend="auto"`` (exact numpy engine);
* ``ours, Aer exact``: the same with ``backend="aer"`` (one Aer ``EstimatorV2`` call per step);
* ``floor``: a plain batched statevector evaluation of the same circuits (encoded feature states
  computed once and reused, the ansatz applied gate by gate to all samples with
  ``numpy.tensordot``), timed per objective evaluation and multiplied by the evaluation budget.

Repetitions alternate between the methods in one process; the table gives medians (min-max).
The qubit-scaling rows time optimizer steps (median time between two objective evaluations)
instead of whole trainings. The orchestration row compares the ``train`` flow with the same
work (core calls and MLflow logging) in a plain script, on the demo configuration.

Run ``make bench`` (writes the ``train_speed`` section of ``benchmarks/RESULTS.md``) or
``python benchmarks/train_speed.py --quick`` (a smoke test that writes nothing).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RESULTS = Path(__file__).with_name("RESULTS.md")
BEGIN, END = "<!-- train_speed:begin -->", "<!-- train_speed:end -->"
VQC_DEFAULT, VQC_AER, OURS, OURS_AER, FLOOR = (
    "VQC default",
    "VQC + Aer sampler",
    "ours, auto",
    "ours, Aer exact",
    "floor",
)


@dataclass
class Case:
    """One benchmark case: data, circuit and what to time."""

    name: str
    n_qubits: int
    X_train: np.ndarray
    y_train: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    maxiter: int
    steps_only: bool = False
    skip: dict[str, str] = field(default_factory=dict)

    @property
    def n_classes(self) -> int:
        return int(np.unique(self.y_train).shape[0])


@dataclass
class Run:
    """One training (or a few timed steps) of one method."""

    seconds: float
    evaluations: int
    executions: int
    accuracy: float | None
    simulated: float | None = None
    """Of ``seconds``, the time inside the simulator (ours only; the rest is COBYLA and setup)."""


# -- data ---------------------------------------------------------------------------------


def builtin_case(name: str, n_qubits: int, maxiter: int, n_train: int | None, seed: int) -> Case:
    from qmlops.config import DatasetConfig
    from qmlops.data import load_dataset
    from qmlops.preprocessing import make_preprocessor, split_dataset

    dataset = load_dataset(DatasetConfig(name=name))  # type: ignore[arg-type]
    splits = split_dataset(dataset, test_size=0.2, random_state=seed)
    X_train, y_train = splits.X_train, splits.y_train
    if n_train is not None and n_train < X_train.shape[0]:
        from sklearn.model_selection import train_test_split

        X_train, _, y_train, _ = train_test_split(
            X_train, y_train, train_size=n_train, stratify=y_train, random_state=seed
        )
    encoder = make_preprocessor(X_train.shape[1], n_qubits, 2.2)
    label = f"{name}, {n_qubits} qubits" + (" (PCA)" if X_train.shape[1] > n_qubits else "")
    return Case(
        name=label,
        n_qubits=n_qubits,
        X_train=encoder.fit_transform(X_train),
        y_train=np.searchsorted(np.unique(y_train), y_train),
        X_test=encoder.transform(splits.X_test),
        y_test=np.searchsorted(np.unique(y_train), splits.y_test),
        maxiter=maxiter,
    )


def synthetic_case(n_qubits: int, n_samples: int, steps: int, seed: int) -> Case:
    from sklearn.datasets import make_classification

    from qmlops.preprocessing import make_preprocessor

    X, y = make_classification(
        n_samples=n_samples + 16,
        n_features=n_qubits,
        n_informative=min(n_qubits, 4),
        n_redundant=0,
        n_classes=2,
        random_state=seed,
    )
    encoder = make_preprocessor(n_qubits, n_qubits, 2.2)
    return Case(
        name=f"synthetic, {n_qubits} qubits",
        n_qubits=n_qubits,
        X_train=encoder.fit_transform(X[:n_samples]),
        y_train=y[:n_samples],
        X_test=encoder.transform(X[n_samples:]),
        y_test=y[n_samples:],
        maxiter=steps,
        steps_only=True,
    )


# -- methods ------------------------------------------------------------------------------


def spec_of(case: Case) -> Any:
    from qmlops.circuits import CircuitSpec

    return CircuitSpec(
        n_qubits=case.n_qubits,
        n_classes=case.n_classes,
        feature_map="zz",
        feature_map_reps=1,
        ansatz="real_amplitudes",
        ansatz_reps=3,
    )


def classifier(case: Case, seed: int, **params: Any) -> Any:
    from qmlops import QuantumClassifier

    settings: dict[str, Any] = {
        "feature_map": "zz",
        "feature_map_reps": 1,
        "ansatz": "real_amplitudes",
        "ansatz_reps": 3,
        # VQC's model: one upload, the Hamming-weight readout (its `interpret`).
        "readout": "hamming_weight",
        "reuploads": 1,
        "optimizer": "cobyla",
        "maxiter": case.maxiter,
        # COBYLA's initial trust radius: SciPy's default, which VQC's COBYLA uses.
        "learning_rate": 1.0,
        "batch_size": None,
        "random_state": seed,
    }
    return QuantumClassifier(**{**settings, **params})


def initial_point(case: Case, seed: int) -> np.ndarray:
    """The classifier's own seeded initial weights (they depend on the seed only), for VQC too."""
    one_per_class = [int(np.flatnonzero(case.y_train == k)[0]) for k in range(case.n_classes)]
    model = classifier(case, seed, maxiter=1, backend="numpy")
    model.fit(case.X_train[one_per_class], case.y_train[one_per_class])
    return np.asarray(model.initial_weights_)


class _StepLimit(Exception):
    """Stops a step-timing run after the steps it needs."""


def step_clock(limit: int) -> tuple[list[float], Callable[..., None]]:
    """A callback recording when each objective evaluation ends; stops after ``limit``."""
    stamps: list[float] = []

    def tick(*_: Any) -> None:
        stamps.append(time.perf_counter())
        if len(stamps) >= limit:
            raise _StepLimit

    return stamps, tick


def median_step(stamps: list[float]) -> float:
    return float(np.median(np.diff(stamps))) if len(stamps) > 1 else float("nan")


def run_vqc(case: Case, start: np.ndarray, seed: int, aer: bool) -> Run:
    from qiskit_machine_learning.algorithms import VQC
    from qiskit_machine_learning.optimizers import COBYLA

    spec = spec_of(case)
    outcome_class = spec.class_of_outcome()
    sampler = None
    if aer:
        from qiskit_aer.primitives import SamplerV2

        sampler = SamplerV2(seed=seed)
    limit = case.maxiter + 1 if case.steps_only else 10**9
    stamps, tick = step_clock(limit)
    model = VQC(
        feature_map=spec.feature_map_circuit(),
        ansatz=spec.ansatz_circuit(),
        optimizer=COBYLA(maxiter=case.maxiter),
        initial_point=start,
        sampler=sampler,
        # Our readout (Hamming weight mod K), so that both train the same model.
        interpret=lambda bits: int(outcome_class[bits]),
        output_shape=case.n_classes,
        callback=tick,
    )
    started = time.perf_counter()
    with contextlib.suppress(_StepLimit):
        model.fit(case.X_train, case.y_train)
    seconds = time.perf_counter() - started
    if case.steps_only:
        return Run(median_step(stamps), len(stamps), len(stamps) * case.X_train.shape[0], None)
    accuracy = float(np.mean(model.predict(case.X_test) == case.y_test))
    return Run(seconds, len(stamps), len(stamps) * case.X_train.shape[0], accuracy)


def run_ours(case: Case, seed: int, backend: str) -> Run:
    stamps, tick = step_clock(case.maxiter + 1 if case.steps_only else 10**9)
    model = classifier(case, seed, backend=backend, callback=tick)
    started = time.perf_counter()
    with contextlib.suppress(_StepLimit):
        model.fit(case.X_train, case.y_train)
    seconds = time.perf_counter() - started
    if case.steps_only:
        evaluations = len(stamps)
        return Run(median_step(stamps), evaluations, evaluations * case.X_train.shape[0], None)
    accuracy = float(model.score(case.X_test, case.y_test))
    simulated = model._evaluator_.counters.seconds
    return Run(seconds, model.primitive_calls_, model.circuit_evaluations_, accuracy, simulated)


class Floor:
    """Plain batched statevector evaluation of the case's circuits (no engine shortcuts)."""

    def __init__(self, case: Case) -> None:
        from qiskit import transpile
        from qiskit.quantum_info import Operator, Statevector

        spec = spec_of(case)
        self.n_qubits = spec.n_qubits
        feature_map = spec.feature_map_circuit()
        columns = [Statevector(feature_map.assign_parameters(x)).data for x in case.X_train]
        self.states = np.stack(columns, axis=-1).reshape((2,) * self.n_qubits + (-1,))
        ansatz = spec.ansatz_circuit()
        index = {param: i for i, param in enumerate(ansatz.parameters)}
        lowered = transpile(ansatz, basis_gates=["ry", "cx"], optimization_level=0)
        self.gates: list[tuple[tuple[int, ...], Any]] = []
        for instruction in lowered.data:
            qubits = tuple(lowered.find_bit(q).index for q in instruction.qubits)
            gate = instruction.operation
            if gate.params:
                self.gates.append((qubits, index[gate.params[0]]))
            else:
                self.gates.append((qubits, Operator(gate).data.reshape((2,) * 2 * len(qubits))))
        self.onehot = np.eye(spec.n_classes)[spec.class_of_outcome()]
        self.targets = case.y_train
        self.weights = np.random.default_rng(0).uniform(-np.pi, np.pi, spec.n_weights)

    def evaluate(self) -> float:
        """One objective evaluation: the ansatz on all encoded states, class sums, the loss."""
        n, psi = self.n_qubits, self.states
        for qubits, gate in self.gates:
            if isinstance(gate, int):
                half = self.weights[gate] / 2
                matrix = np.array([[np.cos(half), -np.sin(half)], [np.sin(half), np.cos(half)]])
                axis = n - 1 - qubits[0]
                psi = np.moveaxis(np.tensordot(matrix, psi, axes=([1], [axis])), 0, axis)
            else:
                axes = [n - 1 - qubits[1], n - 1 - qubits[0]]
                psi = np.moveaxis(np.tensordot(gate, psi, axes=([2, 3], axes)), [0, 1], axes)
        probabilities = np.abs(psi.reshape(2**n, -1)) ** 2
        scores = self.onehot.T @ probabilities
        picked = scores[self.targets, np.arange(self.targets.shape[0])]
        return float(-np.log(np.clip(picked, 1e-10, 1.0)).mean())

    def seconds_per_evaluation(self, repeats: int) -> float:
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            self.evaluate()
            times.append(time.perf_counter() - started)
        return float(np.median(times))


# -- the speed table ----------------------------------------------------------------------


def benchmark_case(case: Case, reps: int, seed: int) -> dict[str, list[Run]]:
    floor = Floor(case)
    runs: dict[str, list[Run]] = {
        name: [] for name in (VQC_DEFAULT, VQC_AER, OURS, OURS_AER, FLOOR)
    }
    n_train = case.X_train.shape[0]
    for rep in range(reps):
        # Each repetition starts every method from the same initial point, a new one per
        # repetition, so the accuracy column reflects more than one starting point.
        rep_seed = seed + rep
        start = initial_point(case, rep_seed)
        methods: dict[str, Callable[[], Run]] = {
            VQC_DEFAULT: functools.partial(run_vqc, case, start, rep_seed, aer=False),
            VQC_AER: functools.partial(run_vqc, case, start, rep_seed, aer=True),
            OURS: functools.partial(run_ours, case, rep_seed, "auto"),
            OURS_AER: functools.partial(run_ours, case, rep_seed, "aer"),
        }
        for name, method in methods.items():
            if name in case.skip:
                continue
            result = method()
            runs[name].append(result)
            print(f"  {case.name} rep {rep + 1}/{reps} {name}: {result.seconds:.3f} s", flush=True)
        per_evaluation = floor.seconds_per_evaluation(1 if case.n_qubits >= 16 else 5)
        evaluations = 1 if case.steps_only else case.maxiter
        runs[FLOOR].append(
            Run(per_evaluation * evaluations, evaluations, evaluations * n_train, None)
        )
    return runs


def _fmt_seconds(values: list[float]) -> str:
    def one(value: float) -> str:
        if value >= 10:
            return f"{value:.0f}"
        if value >= 1:
            return f"{value:.1f}"
        if value >= 0.01:
            return f"{value:.3f}".rstrip("0")
        return f"{value:.2g}"

    median = statistics.median(values)
    return f"{one(median)} ({one(min(values))}–{one(max(values))})"


def case_rows(case: Case, runs: dict[str, list[Run]]) -> list[list[str]]:
    def median_seconds(name: str) -> float:
        results = runs[name]
        return statistics.median(r.seconds for r in results) if results else float("nan")

    def ratio(reference: float, median: float) -> str:
        return "–" if np.isnan(reference) else f"{reference / median:.1f}x"

    rows = []
    for name, results in runs.items():
        if not results:
            rows.append([case.name, name, "not run: " + case.skip.get(name, "")] + [""] * 5)
            continue
        median = statistics.median(r.seconds for r in results)
        accuracies = [r.accuracy for r in results if r.accuracy is not None]
        simulated = [r.simulated for r in results if r.simulated is not None]
        inside = f"; simulator {_fmt_seconds(simulated)}" if simulated else ""
        accuracy = "–"
        if accuracies:
            accuracy = f"{statistics.median(accuracies):.3f}"
            if len(accuracies) > 1:
                accuracy += f" ({min(accuracies):.3f}–{max(accuracies):.3f})"
        rows.append(
            [
                case.name,
                name,
                _fmt_seconds([r.seconds for r in results]) + inside,
                str(int(statistics.median(r.evaluations for r in results))),
                f"{int(statistics.median(r.executions for r in results)):,}",
                accuracy,
                ratio(median_seconds(VQC_DEFAULT), median),
                ratio(median_seconds(VQC_AER), median),
            ]
        )
    return rows


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


# -- orchestration overhead ---------------------------------------------------------------


@contextlib.contextmanager
def isolated_stores() -> Iterator[str]:
    """A temporary Prefect home and MLflow store, so the benchmark leaves nothing behind."""
    with tempfile.TemporaryDirectory(prefix="qmlops-bench-", ignore_cleanup_errors=True) as folder:
        os.environ["PREFECT_HOME"] = str(Path(folder) / "prefect")
        os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
        os.environ["PREFECT_LOGGING_LEVEL"] = "WARNING"
        # The temporary server's start is excluded from the timing; on a busy machine it can
        # take longer than Prefect's default 20 s wait.
        os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
        yield f"sqlite:///{folder}/mlflow.db"


def demo_parameters(tracking_uri: str) -> dict[str, Any]:
    from qmlops_cli import build_parser, configs_from_args

    args = build_parser().parse_args(["train", "--dataset", "iris", "--tracking-uri", tracking_uri])
    return configs_from_args(args)


def plain_script(params: dict[str, Any]) -> None:
    """The train flow's work without Prefect: the same core calls, MLflow logging and gate."""
    from qmlops.config import PromotionConfig, resolve_circuit, resolve_model_name
    from tasks import data, evaluation, tracking, training
    from tasks.train_and_record import train_run_configs

    promotion = params.get("promotion", PromotionConfig())
    dataset, circuit, train, track = (
        params[k] for k in ("dataset", "circuit", "training", "tracking")
    )
    loaded = data.load_dataset.fn(dataset)
    circuit = resolve_circuit(circuit, loaded.features.shape[1], loaded.n_classes)
    model_name = resolve_model_name(track.model_name, dataset)
    prepared = data.preprocess_features.fn(loaded, dataset, circuit.qubits, train.random_state)
    training.build_classifier(circuit, train).plan(
        prepared.X_train.shape[0], 0, prepared.X_train.shape[1], loaded.n_classes
    )
    run = tracking.start_tracking_run.fn(track.tracking_uri, track.experiment, "plain", {})
    configs = train_run_configs(dataset, circuit, train, track, promotion)
    tracking.log_run_inputs.fn(run, configs, loaded)
    model = training.build_classifier(circuit, train)
    model.fit(prepared.X_train, prepared.raw.y_train)
    baselines = training.train_baselines.fn(prepared, train.random_state)
    evaluations = evaluation.evaluate_models.fn({"quantum": model, **baselines}, prepared)
    tracking.log_training.fn(run, model)
    tracking.log_evaluation.fn(run, evaluations)
    logged = tracking.log_model.fn(
        run, model, prepared, list(loaded.feature_names), model_name, track.register_model
    )
    if logged.registered_version:
        tracking.promote_model.fn(run, logged, evaluations, loaded.fingerprint, promotion)
    tracking.end_tracking_run.fn(run, "FINISHED")


# Pause before each timed run. Prefect's SQLite server records a finished run's task events
# just after it ends; a flow run created in that moment gets "database is locked" (a 503,
# PrefectHQ/prefect#18934) and the client retries after about 2 s. Measured here: back to
# back, most runs of a 5-task flow took 2 s instead of 0.13 s; 0.25 s apart, none did. A user's
# `qmlops train` starts a fresh process, so every timed run starts settled.
SETTLE_SECONDS = 0.5


def _count_task_runs(flow_run_id: Any) -> int:
    """Task runs the server recorded for a flow run (they arrive as events: wait until stable)."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    counts: list[int] = []
    with get_client(sync_client=True) as client:
        for _ in range(40):
            runs = client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
            )
            counts.append(len(runs))
            if len(counts) >= 3 and counts[-1] == counts[-2] == counts[-3] > 0:
                break
            time.sleep(0.25)
    return counts[-1]


def prefect_floor_flow() -> Any:
    """A flow of ``n_tasks`` no-op tasks: what Prefect itself costs, with nothing to do."""
    from prefect import flow, task
    from prefect.cache_policies import NO_CACHE

    @task(name="no-op", cache_policy=NO_CACHE)
    def no_op() -> None:
        return None

    @flow(name="prefect-floor")
    def floor(n_tasks: int) -> None:
        for _ in range(n_tasks):
            no_op()

    return floor


@dataclass
class Overhead:
    """Wall times of the orchestration comparison."""

    flow: list[float]
    plain: list[float]
    floor: list[float]
    empty: list[float]
    n_tasks: int
    first_flow: float


def orchestration_overhead(reps: int) -> Overhead:
    """Wall times of the flow, the plain script and Prefect's floor (alternating)."""
    with isolated_stores() as tracking_uri:
        from flows.heartbeats import without_flow_heartbeats
        from flows.train import train

        params = demo_parameters(tracking_uri)
        started = time.perf_counter()
        # Starts Prefect's temporary server: a one-off, excluded.
        state = train(**params, force=True, return_state=True)
        first = time.perf_counter() - started
        n_tasks = _count_task_runs(state.state_details.flow_run_id)
        floor_flow = prefect_floor_flow()
        with without_flow_heartbeats():
            floor_flow(n_tasks)
        plain_script(params)  # warms MLflow's store and imports alike
        result = Overhead([], [], [], [], n_tasks, first)

        def timed(work: Callable[[], Any], times: list[float]) -> None:
            time.sleep(SETTLE_SECONDS)
            started = time.perf_counter()
            work()
            times.append(time.perf_counter() - started)

        for rep in range(reps):
            # force: no cached training or checkpoint resume, so both paths do the same work;
            # in the foreground, as `qmlops train` runs it (no flow-run heartbeats).
            with without_flow_heartbeats():
                timed(lambda: train(**params, force=True), result.flow)
                timed(lambda: floor_flow(n_tasks), result.floor)
                timed(lambda: floor_flow(0), result.empty)
            timed(lambda: plain_script(params), result.plain)
            print(
                f"  overhead rep {rep + 1}/{reps}: flow {result.flow[-1]:.2f} s, "
                f"plain {result.plain[-1]:.2f} s, Prefect floor {result.floor[-1]:.2f} s, "
                f"empty flow {result.empty[-1]:.2f} s",
                flush=True,
            )
    return result


# -- main ---------------------------------------------------------------------------------


def machine_line(command: str) -> str:
    import qiskit
    import qiskit_aer
    import qiskit_machine_learning

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (
        f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} with `{command}` on "
        f"{platform.machine()} Linux, {cores} cores, Python {platform.python_version()}, "
        f"qiskit {qiskit.__version__}, qiskit-aer {qiskit_aer.__version__}, "
        f"qiskit-machine-learning {qiskit_machine_learning.__version__}, numpy {np.__version__}; "
        f"1-minute load average at the end: {load:.1f}."
    )


def write_section(text: str, path: Path = RESULTS, markers: tuple[str, str] = (BEGIN, END)) -> None:
    """Replace one benchmark's section of RESULTS.md (this one's by default), keeping the rest."""
    begin, end = markers
    block = f"{begin}\n{text.strip()}\n{end}\n"
    current = path.read_text() if path.exists() else "# Benchmark results\n\n"
    if begin in current and end in current:
        head, rest = current.split(begin, 1)
        tail = rest.split(end, 1)[1].lstrip("\n")
        current = head + block + ("\n" + tail if tail else "")
    else:
        current = current.rstrip("\n") + "\n\n" + block
    path.write_text(current)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny smoke run; writes nothing")
    parser.add_argument("--reps", type=int, default=None, help="repetitions (default 3; quick 1)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--no-overhead", action="store_true", help="skip the flow-overhead row")
    parser.add_argument("--output", type=Path, default=None, help="results file to update")
    args = parser.parse_args(argv)
    reps = args.reps or (1 if args.quick else 3)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # SciPy's COBYLA warns when maxiter < weights + 2 (then it runs weights + 2 evaluations).
    warnings.filterwarnings("ignore", message="COBYLA: Invalid MAXFUN")
    started = time.perf_counter()

    if args.quick:
        cases = [
            # COBYLA needs at least (weights + 2) evaluations: 18 at 4 qubits, 34 at 8.
            builtin_case("iris", 4, maxiter=18, n_train=None, seed=args.seed),
            builtin_case("breast_cancer", 8, maxiter=34, n_train=24, seed=args.seed),
            synthetic_case(4, 32, steps=3, seed=args.seed),
            synthetic_case(8, 32, steps=3, seed=args.seed),
        ]
    else:
        cases = [
            builtin_case("iris", 4, maxiter=100, n_train=None, seed=args.seed),
            synthetic_case(4, 64, steps=6, seed=args.seed),
            synthetic_case(8, 64, steps=6, seed=args.seed),
            synthetic_case(12, 64, steps=4, seed=args.seed),
            synthetic_case(16, 32, steps=3, seed=args.seed),
            synthetic_case(18, 8, steps=3, seed=args.seed),
            builtin_case("breast_cancer", 8, maxiter=100, n_train=100, seed=args.seed),
        ]
        for wide in cases[-3:-1]:
            wide.skip[VQC_DEFAULT] = (
                f"its exact sampler builds a {2**wide.n_qubits:,}-entry Python dict per sample "
                "and step"
            )

    training_rows: list[list[str]] = []
    step_rows: list[list[str]] = []
    overhead_text = ""
    given = sys.argv[1:] if argv is None else argv
    command = " ".join(["python benchmarks/train_speed.py", *given])
    output = args.output or (None if args.quick else RESULTS)

    def report(complete: bool) -> str:
        text = render(training_rows, step_rows, overhead_text, reps, command)
        text += f"\n\nWhole benchmark: {time.perf_counter() - started:.0f} s."
        if not complete:
            text += " INCOMPLETE: the run was still going when this was written."
        if output is not None:
            write_section(text, output)
        return text

    if not args.no_overhead:
        overhead_text = overhead_section(reps)
    for case in cases:
        print(f"{case.name}: {case.X_train.shape[0]} training samples", flush=True)
        runs = benchmark_case(case, reps, args.seed)
        (step_rows if case.steps_only else training_rows).extend(case_rows(case, runs))
        report(complete=False)
    print()
    print(report(complete=True))
    return 0


def overhead_section(reps: int) -> str:
    measured = orchestration_overhead(reps)
    flow, plain = statistics.median(measured.flow), statistics.median(measured.plain)
    floor, empty = statistics.median(measured.floor), statistics.median(measured.empty)
    overhead = (flow - plain) / flow
    verdict = "meets" if overhead <= 0.05 else "misses"
    return (
        "\n\n### Orchestration overhead (demo configuration: `qmlops train --dataset iris`)\n\n"
        + markdown_table(
            ["path", "wall time s, median (min–max)", "overhead"],
            [
                [
                    "`train` flow (Prefect, warm temporary server, run as `qmlops train` runs it)",
                    _fmt_seconds(measured.flow),
                    "",
                ],
                [
                    "plain script: same core calls, same MLflow logging",
                    _fmt_seconds(measured.plain),
                    "",
                ],
                [
                    "flow − plain",
                    f"{flow - plain:.2f}",
                    f"{overhead:.1%} of the flow's wall time ({verdict} the 5% goal)",
                ],
                [
                    f"Prefect alone: a flow of {measured.n_tasks} no-op tasks (as many task "
                    "runs as the `train` flow made), run the same way",
                    _fmt_seconds(measured.floor),
                    f"{floor / (plain + floor):.1%} of plain script + it: the least a flow of "
                    "this shape adds",
                ],
                [
                    "Prefect alone: an empty flow, run the same way",
                    _fmt_seconds(measured.empty),
                    f"{empty / (plain + empty):.1%} of plain script + it: the least any flow adds",
                ],
            ],
        )
        + f"\n\nThe first flow run in the process took {measured.first_flow:.1f} s: it starts "
        "Prefect's temporary server (a one-off, excluded above); the plain script and the "
        "no-op flow ran once before timing too, so all start warm, and each timed run starts "
        f"{SETTLE_SECONDS} s after the previous one ends (back to back, Prefect's SQLite server "
        "often refuses the next flow run for a moment, 'database is locked', and the client "
        "retries after about 2 s: PrefectHQ/prefect#18934). Both real paths log to a "
        "temporary MLflow SQLite store and register the model; the flow runs with `force=True` "
        "(no cached training, no checkpoint resume) and also persists its cached results, "
        "writes training checkpoints and publishes its Prefect summary artifact. Like `qmlops "
        "train`, the flows run in the foreground without Prefect's flow-run heartbeats "
        "(`flows/heartbeats.py`): Prefect 3.8 joins its heartbeat thread, which sleeps in "
        "one-second steps, at the end of every run, which cost about 1 s per run."
    )


def render(
    training_rows: list[list[str]],
    step_rows: list[list[str]],
    overhead_text: str,
    reps: int,
    command: str,
) -> str:
    header = [
        "case",
        "method",
        "wall time s, median (min–max)",
        "objective evaluations",
        "circuit executions",
        "test accuracy, median (min–max)",
        "speed-up vs VQC default",
        "speed-up vs VQC + Aer",
    ]
    step_header = [h.replace("wall time s", "s per step") for h in header]
    return (
        "## Training speed (`benchmarks/train_speed.py`)\n\n"
        + machine_line(command)
        + f" {reps} repetition{'s' if reps > 1 else ''} per method, alternating in one process.\n\n"
        "All methods train the same model: ZZ feature map (reps 1) + RealAmplitudes (reps 3), "
        "reverse-linear entanglement, Hamming-weight readout (given to VQC as `interpret`), "
        "mean cross-entropy, COBYLA with the same initial point (repetition r starts all "
        "methods from the point seeded with seed + r), initial trust radius 1.0 and "
        "evaluation budget. Circuit executions of VQC = objective evaluations × training "
        "samples. Floor = a plain batched statevector evaluation (encoded states reused, "
        "gate by gate with `numpy.tensordot`), median time per objective evaluation × the "
        "budget. For our classifier, `simulator` is the part of the wall time spent in the "
        "simulator; the rest is SciPy's COBYLA (pure Python since SciPy 1.16) and setup.\n\n"
        "### Whole trainings (COBYLA, 100 evaluations)\n\n"
        "breast_cancer: a stratified subsample of 100 of its 455 training samples, the same for "
        "every method, so that VQC's repetitions fit the benchmark's time; all are tested on "
        "the full held-out 20%.\n\n"
        + markdown_table(header, training_rows)
        + "\n\n### Qubit scaling (synthetic data, 2 classes; time per optimizer step)\n\n"
        "Each method runs a few COBYLA steps; the time is the median interval between two "
        "objective evaluations (setup excluded); the floor is one plain evaluation.\n\n"
        + markdown_table(step_header, step_rows)
        + overhead_text
    )


if __name__ == "__main__":
    sys.exit(main())
