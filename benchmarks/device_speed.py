"""Training under a device's noise: qiskit-machine-learning's VQC against ours, side by side.

Both train the same model on the same data under the same noise: the classifier's default
circuit with one upload (Z feature map + EfficientSU2, reverse-linear entanglement) and the
Hamming-weight readout (given to VQC as ``interpret``) on iris (4 features, 4 qubits),
transpiled to ``fake_manila`` (5 qubits) at optimisation level 1 with the same seed, sampled
with 1024 shots on Aer with the device's noise model (``AerSimulator.from_backend``; VQC
gets Aer's ``SamplerV2.from_backend`` of the same fake backend and the same preset pass
manager). Both use SPSA with the same gain sequences
(Spall's: ``a_k = lr / (k + 1 + 0.1 maxiter) ** 0.602``, ``c_k = 0.1 / (k + 1) ** 0.101``), the
same initial point, the whole training set at every step and the same number of steps:

* ``ours``: :class:`qmlops.noisy.DeviceClassifier` (``--device fake_manila --train-on device
  --optimizer spsa``): ONE call per step with both perturbed points and the current one (its
  record) for every sample, on the circuit transpiled once, sampled by qmlops' exact
  density-matrix engine (:mod:`qmlops.noisy_engine`: the same noise model, every circuit's
  exact outcome distribution, then the shots drawn from it);
* ``VQC``: ``VQC(optimizer=SPSA(...), sampler=..., pass_manager=...)``, which evaluates the
  loss at the two perturbed points (one sampler call each).

A step's time is the training's wall time divided by its steps, after one untimed step of each
(one-time costs: imports, the noise model, the transpiler's plugins). Test accuracy is measured the
same way for both trained weight vectors: exact (our numpy engine) and on the noisy device with
1024 shots (one sampler call). Repetitions alternate between the two; the table gives medians.

Run ``make bench`` (writes the ``device_speed`` section of ``benchmarks/RESULTS.md``) or
``python benchmarks/device_speed.py --quick`` (a smoke test that writes nothing).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from train_speed import RESULTS, builtin_case, machine_line, markdown_table, write_section  # noqa: E402

SECTION = "device_speed"
DEVICE = "fake_manila"
SHOTS = 1024
OPTIMIZATION_LEVEL = 1
LEARNING_RATE = 0.1
PERTURBATION = 0.1
OURS, VQC_NAME = "ours, DeviceClassifier", "qiskit-machine-learning VQC"


@dataclass
class Trained:
    """One training of one method: time, steps and the trained weights."""

    seconds: float
    steps: int
    weights: np.ndarray


@dataclass
class Scored:
    """A training and the test accuracy of its weights."""

    trained: Trained
    exact_accuracy: float
    device_accuracy: float

    @property
    def seconds_per_step(self) -> float:
        return self.trained.seconds / self.trained.steps


def gains(maxiter: int) -> tuple[Callable[[], Iterator[float]], Callable[[], Iterator[float]]]:
    """SPSA's learning-rate and perturbation sequences as qmlops' SPSA uses them."""
    stability = 0.1 * maxiter

    def learning_rate() -> Iterator[float]:
        k = 0
        while True:
            yield LEARNING_RATE / (k + 1 + stability) ** 0.602
            k += 1

    def perturbation() -> Iterator[float]:
        k = 0
        while True:
            yield PERTURBATION / (k + 1) ** 0.101
            k += 1

    return learning_rate, perturbation


def ours(case: Any, maxiter: int, seed: int) -> tuple[Trained, Any]:
    from qmlops.noisy import DeviceClassifier

    model = DeviceClassifier(
        device=DEVICE,
        device_shots=SHOTS,
        optimization_level=OPTIMIZATION_LEVEL,
        # VQC takes a feature map, an ansatz and a bitstring-to-class map: the Hamming-weight
        # readout with one upload is the model both can train.
        readout="hamming_weight",
        reuploads=1,
        optimizer="spsa",
        maxiter=maxiter,
        learning_rate=LEARNING_RATE,
        batch_size=None,
        random_state=seed,
    )
    started = time.perf_counter()
    model.fit(case.X_train, case.y_train)
    seconds = time.perf_counter() - started
    return Trained(seconds, maxiter, np.asarray(model.weights_)), model


def vqc(case: Any, model: Any, maxiter: int, seed: int) -> Trained:
    from qiskit.transpiler import generate_preset_pass_manager
    from qiskit_aer.primitives import SamplerV2
    from qiskit_machine_learning.algorithms import VQC
    from qiskit_machine_learning.optimizers import SPSA

    from qmlops.devices import device_backend, resolve_device

    backend = device_backend(resolve_device(DEVICE))
    outcome_class = model.spec_.class_of_outcome()
    learning_rate, perturbation = gains(maxiter)
    classifier = VQC(
        feature_map=model.spec_.feature_map_circuit(),
        ansatz=model.spec_.ansatz_circuit(),
        optimizer=SPSA(maxiter=maxiter, learning_rate=learning_rate, perturbation=perturbation),
        initial_point=np.asarray(model.initial_weights_),
        sampler=SamplerV2.from_backend(backend, seed=seed, default_shots=SHOTS),
        pass_manager=generate_preset_pass_manager(
            optimization_level=OPTIMIZATION_LEVEL, backend=backend, seed_transpiler=0
        ),
        interpret=lambda bits: int(outcome_class[bits]),
        output_shape=model.spec_.n_classes,
    )
    started = time.perf_counter()
    classifier.fit(case.X_train, case.y_train)
    seconds = time.perf_counter() - started
    return Trained(seconds, maxiter, np.asarray(classifier.weights))


def score(case: Any, model: Any, weights: np.ndarray, seed: int) -> tuple[float, float]:
    """Exact and noisy-device test accuracy of ``weights`` in ``model``'s circuit."""
    from qmlops.classifier import QuantumClassifier
    from qmlops.devices import resolve_device
    from qmlops.noisy import evaluate_on_device

    state = model.to_state()
    state["weights"] = [float(w) for w in weights]
    trained = QuantumClassifier.from_state(state)
    exact = float(trained.score(case.X_test, case.y_test))
    on_device = evaluate_on_device(
        trained,
        case.X_test,
        case.y_test,
        resolve_device(DEVICE),
        shots=SHOTS,
        optimization_level=OPTIMIZATION_LEVEL,
        seed=seed,
    )
    return exact, float(on_device.metrics["accuracy"])


def benchmark(maxiter: int, reps: int, seed: int) -> dict[str, list[Scored]]:
    case = builtin_case("iris", 4, maxiter, None, seed)
    # One untimed step of each first: imports, the device's noise model and the transpiler's
    # plugins are paid once per process, by whichever method happens to run first.
    _, warm = ours(case, 1, seed)
    vqc(case, warm, 1, seed)
    results: dict[str, list[Scored]] = {OURS: [], VQC_NAME: []}
    for rep in range(reps):
        rep_seed = seed + rep
        trained, model = ours(case, maxiter, rep_seed)
        results[OURS].append(Scored(trained, *score(case, model, trained.weights, rep_seed)))
        theirs = vqc(case, model, maxiter, rep_seed)
        results[VQC_NAME].append(Scored(theirs, *score(case, model, theirs.weights, rep_seed)))
        print(
            f"rep {rep}: ours {results[OURS][-1].seconds_per_step * 1e3:.1f} ms/step, "
            f"VQC {results[VQC_NAME][-1].seconds_per_step * 1e3:.1f} ms/step",
            flush=True,
        )
    return results


def _ms(values: list[float]) -> str:
    low, high = min(values) * 1e3, max(values) * 1e3
    return f"{statistics.median(values) * 1e3:.1f} ms ({low:.1f}–{high:.1f})"


def _accuracy(values: list[float]) -> str:
    return f"{statistics.mean(values):.3f} ± {statistics.pstdev(values):.3f}"


def render(results: dict[str, list[Scored]], maxiter: int, reps: int, command: str) -> str:
    ours_step = statistics.median(s.seconds_per_step for s in results[OURS])
    rows = []
    for name, scored in results.items():
        step = statistics.median(s.seconds_per_step for s in scored)
        rows.append(
            [
                name,
                _ms([s.seconds_per_step for s in scored]),
                f"{statistics.median(s.trained.seconds for s in scored):.1f} s",
                _accuracy([s.exact_accuracy for s in scored]),
                _accuracy([s.device_accuracy for s in scored]),
                f"{step / ours_step:.1f}x",
            ]
        )
    speedup = statistics.median(s.seconds_per_step for s in results[VQC_NAME]) / ours_step
    accurate = statistics.mean(s.device_accuracy for s in results[OURS]) >= statistics.mean(
        s.device_accuracy for s in results[VQC_NAME]
    )
    verdict = (
        f"Ours per step: {speedup:.1f}x faster than VQC "
        f"({'meets' if speedup >= 20 else 'misses'} the 20x goal); device test accuracy "
        f"{'equal or better' if accurate else 'lower'}."
    )
    return "\n".join(
        [
            f"## Training under device noise (`benchmarks/{Path(__file__).name}`)",
            "",
            machine_line(command),
            "",
            f"iris (4 qubits), `{DEVICE}` noise, {SHOTS} shots, SPSA {maxiter} steps on the "
            f"whole training set, {reps} repetitions (seeds), same initial point and gains for "
            "both; see the script's docstring for the set-up.",
            "",
            markdown_table(
                [
                    "method",
                    "s per step, median (min–max)",
                    "training, median",
                    "test accuracy, exact (mean ± sd)",
                    f"test accuracy, {DEVICE} {SHOTS} shots",
                    "x ours",
                ],
                rows,
            ),
            "",
            verdict,
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny smoke run; writes nothing")
    parser.add_argument("--maxiter", type=int, default=None, help="SPSA steps (default 30)")
    parser.add_argument("--reps", type=int, default=None, help="repetitions (default 3)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--output", type=Path, default=None, help="results file to update")
    args = parser.parse_args(argv)
    maxiter = args.maxiter or (3 if args.quick else 30)
    reps = args.reps or (1 if args.quick else 3)
    started = time.perf_counter()
    results = benchmark(maxiter, reps, args.seed)
    command = "python benchmarks/device_speed.py" + (" " + " ".join(argv or sys.argv[1:])).rstrip()
    text = render(results, maxiter, reps, command)
    text += f"\n\nWhole benchmark: {time.perf_counter() - started:.0f} s.\n"
    print(text)
    if args.quick and args.output is None:
        return 0
    output = args.output or RESULTS
    begin, end = f"<!-- {SECTION}:begin -->", f"<!-- {SECTION}:end -->"
    write_section(text, output, (begin, end))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
