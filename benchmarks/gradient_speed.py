"""Gradient speed: our adjoint gradient against PennyLane's fastest gradients, on one model.

Every method computes the loss and its exact gradient for the same model: Z feature map
(reps 1) + EfficientSU2 (reps 2 up to 4 qubits, 3 above), reverse-linear entanglement, parity
(popcount mod 2) readout, mean cross-entropy, on breast_cancer reduced to ``n`` features by PCA:

* ``ours, adjoint``: :meth:`qmlops.simulation.CircuitEvaluator.loss_gradient`, the classifier's
  default gradient on the exact numpy engine;
* ``ours, parameter shift``: the same evaluator's ``2P + 1`` shifted points in one call (the
  classifier's gradient before the adjoint method, re-measured here);
* ``PennyLane default.qubit, JAX``: ``jax.jit(jax.value_and_grad(loss))`` over a
  ``jax.vmap``-ed QNode with ``diff_method="backprop"`` (compilation excluded);
* ``PennyLane lightning.qubit, adjoint``: a broadcast QNode with ``diff_method="adjoint"``.

Before timing, each PennyLane circuit's class probabilities are checked against ours (to 1e-9)
at the same weights. Per-step rows time one loss + gradient (the median over runs of about
50 ms of back-to-back calls, the methods taking turns run by run); ``forward`` is one of our
forward passes on the same samples.
The training rows time 100 Adam steps (mini-batch or full batch) from the same initial
weights, with the same Adam update for every method.

Run ``make bench`` (writes the ``gradient_speed`` section of ``benchmarks/RESULTS.md``) or
``python benchmarks/gradient_speed.py --quick`` (a smoke test that writes nothing).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from train_speed import (  # noqa: E402
    RESULTS,
    builtin_case,
    machine_line,
    markdown_table,
    write_section,
)

BEGIN, END = "<!-- gradient_speed:begin -->", "<!-- gradient_speed:end -->"
OURS, SHIFT, JAX, LIGHTNING = (
    "ours, adjoint",
    "ours, parameter shift",
    "PennyLane default.qubit, JAX jit + vmap backprop",
    "PennyLane lightning.qubit, adjoint",
)
EPSILON = 1e-10
FORWARD_NOTE = (
    "Read the `x forward` column with care above 5 qubits: there our forward pass "
    "(`class_probabilities`) lets numpy's BLAS use both cores on the calling thread, while the "
    "adjoint gradient holds BLAS at one thread (up to 5 qubits both hold it at one thread); on a "
    "loaded machine a two-thread BLAS call waits for a descheduled thread, so a forward pass "
    "can take longer than a whole gradient (ratios below 1). Those ratios, and the `meets the "
    "4x goal` verdicts that rest on them, then say nothing about the gradient's cost; the rows "
    "up to 5 qubits, at 12 qubits, batch 455, and at 16 qubits, where both run with BLAS at one "
    "thread, do."
)


@dataclass
class Model:
    """One benchmark size: our evaluator and both PennyLane gradients of the same loss."""

    n_qubits: int
    X: np.ndarray
    y: np.ndarray
    weights: np.ndarray
    spec: Any
    evaluator: Any
    ansatz_ops: list[tuple[str, tuple[int, ...], int]]


def make_model(n_qubits: int, seed: int) -> Model:
    from qiskit import transpile

    from qmlops.circuits import CircuitSpec
    from qmlops.config import default_ansatz_reps
    from qmlops.simulation import CircuitEvaluator

    case = builtin_case("breast_cancer", n_qubits, maxiter=100, n_train=None, seed=seed)
    spec = CircuitSpec(
        n_qubits=n_qubits,
        n_classes=2,
        feature_map="z",
        ansatz="efficient_su2",
        ansatz_reps=default_ansatz_reps(n_qubits),
        entanglement="reverse_linear",
    )
    ansatz = spec.ansatz_circuit()
    index = {param: i for i, param in enumerate(ansatz.parameters)}
    lowered = transpile(ansatz, basis_gates=["ry", "rz", "cx"], optimization_level=0)
    ops = []
    for instruction in lowered.data:
        qubits = tuple(lowered.find_bit(q).index for q in instruction.qubits)
        gate = instruction.operation
        ops.append((gate.name, qubits, index[gate.params[0]] if gate.params else -1))
    weights = np.random.default_rng(seed).uniform(-np.pi, np.pi, spec.n_weights)
    evaluator = CircuitEvaluator(spec, backend="numpy")
    return Model(n_qubits, case.X_train, case.y_train, weights, spec, evaluator, ops)


# -- our methods --------------------------------------------------------------------------


def ours_adjoint(model: Model, rows: np.ndarray) -> Callable[[], float]:
    from qmlops.training import cross_entropy, cross_entropy_cotangent

    targets = model.y[rows]

    def step() -> float:
        probabilities, _, _ = model.evaluator.loss_gradient(
            model.X, model.weights, cross_entropy_cotangent(targets), rows
        )
        return float(cross_entropy(probabilities[None], targets)[0])

    return step


def ours_parameter_shift(model: Model, rows: np.ndarray) -> Callable[[], float]:
    n_weights = model.weights.shape[0]
    shifts = np.concatenate([np.eye(n_weights), -np.eye(n_weights)]) * np.pi / 2
    targets = model.y[rows]

    def step() -> float:
        points = np.concatenate([model.weights[None], model.weights[None] + shifts])
        probabilities = model.evaluator.class_probabilities([(model.X, points, rows)])[0]
        picked = np.clip(probabilities[:, np.arange(rows.shape[0]), targets], EPSILON, 1.0)
        dp = (picked[1 : n_weights + 1] - picked[n_weights + 1 :]) / 2.0
        _ = -(dp / picked[0][None, :]).mean(axis=1)
        return float(-np.log(picked[0]).mean())

    return step


def ours_forward(model: Model, rows: np.ndarray) -> Callable[[], float]:
    def step() -> float:
        model.evaluator.class_probabilities([(model.X, model.weights[None], rows)])
        return 0.0

    return step


# -- PennyLane ----------------------------------------------------------------------------


def pennylane_circuit(model: Model) -> Callable[..., Any]:
    """The classifier circuit in PennyLane, returning the parity ``<Z...Z>``."""
    import functools
    import operator

    import pennylane as qml

    n = model.n_qubits
    parity = functools.reduce(operator.matmul, [qml.PauliZ(q) for q in range(n)])

    def circuit(weights: Any, x: Any) -> Any:
        # Qiskit's z_feature_map: H, then P(2 x_q), on every qubit.
        for q in range(n):
            qml.Hadamard(wires=q)
            qml.PhaseShift(2.0 * x[..., q], wires=q)
        for name, qubits, index in model.ansatz_ops:
            if name == "ry":
                qml.RY(weights[index], wires=qubits[0])
            elif name == "rz":
                qml.RZ(weights[index], wires=qubits[0])
            else:
                qml.CNOT(wires=list(qubits))
        return qml.expval(parity)

    return circuit


def pennylane_jax(model: Model) -> tuple[Callable[..., Any], Callable[..., Any]]:
    """``(loss_and_grad(weights, X, y), probabilities(weights, X))``, jitted."""
    import jax
    import jax.numpy as jnp
    import pennylane as qml

    jax.config.update("jax_enable_x64", True)
    device = qml.device("default.qubit", wires=model.n_qubits)
    qnode = qml.QNode(pennylane_circuit(model), device, interface="jax", diff_method="backprop")
    batched = jax.vmap(qnode, in_axes=(None, 0))

    def probabilities(weights: Any, X: Any) -> Any:
        odd = (1.0 - batched(weights, X)) / 2.0  # parity 1: odd popcount
        return jnp.stack([1.0 - odd, odd], axis=-1)

    def loss(weights: Any, X: Any, y: Any) -> Any:
        picked = jnp.take_along_axis(probabilities(weights, X), y[:, None], axis=1)[:, 0]
        return -jnp.mean(jnp.log(jnp.clip(picked, EPSILON, 1.0)))

    return jax.jit(jax.value_and_grad(loss)), jax.jit(probabilities)


def pennylane_lightning(model: Model) -> tuple[Callable[..., Any], Callable[..., Any]]:
    """``(loss_and_grad(weights, X, y), probabilities(weights, X))`` with autograd."""
    import pennylane as qml
    from pennylane import numpy as pnp

    device = qml.device("lightning.qubit", wires=model.n_qubits)
    qnode = qml.QNode(pennylane_circuit(model), device, diff_method="adjoint")

    def probabilities(weights: Any, X: Any) -> Any:
        odd = (1.0 - qnode(weights, X)) / 2.0
        return pnp.stack([1.0 - odd, odd], axis=-1)

    def loss(weights: Any, X: Any, y: Any) -> Any:
        odd = (1.0 - qnode(weights, X)) / 2.0
        picked = pnp.where(y == 1, odd, 1.0 - odd)
        return -pnp.mean(pnp.log(pnp.clip(picked, EPSILON, 1.0)))

    gradient = qml.grad(loss, argnums=0)

    def loss_and_grad(weights: Any, X: Any, y: Any) -> tuple[Any, Any]:
        trainable = pnp.array(weights, requires_grad=True)
        features = pnp.array(X, requires_grad=False)
        return loss(trainable, features, y), gradient(trainable, features, y)

    return loss_and_grad, lambda weights, X: probabilities(
        pnp.array(weights, requires_grad=False), pnp.array(X, requires_grad=False)
    )


def pennylane_step(
    loss_and_grad: Callable[..., Any], model: Model, rows: np.ndarray, is_jax: bool
) -> Callable[[], float]:
    X, y = model.X[rows], model.y[rows]
    if is_jax:
        import jax

        X, y = jax.numpy.asarray(X), jax.numpy.asarray(y)

    def step() -> float:
        value, gradient = loss_and_grad(model.weights, X, y)
        if is_jax:
            gradient.block_until_ready()
        return float(value)

    return step


def check_probabilities(model: Model, probabilities: Callable[..., Any], rows: np.ndarray) -> float:
    ours = model.evaluator.class_probabilities([(model.X, model.weights[None], rows)])[0][0]
    theirs = np.asarray(probabilities(model.weights, model.X[rows]))
    return float(np.max(np.abs(ours - theirs)))


# -- timing -------------------------------------------------------------------------------


def timed(
    methods: dict[str, Callable[[], float]], budget_s: float, max_reps: int, run_s: float = 0.05
) -> tuple[dict[str, list[float]], dict[str, float]]:
    """Per-call times of repeated runs of every method, round-robin, after two warm-up calls.

    A run is as many back-to-back calls as fill about ``run_s`` (at least one), as a training
    takes its steps. Alternating single calls would time each method just after another
    library's call, with its own code and data out of the caches: that slows a sub-millisecond
    step by more than its own arithmetic costs. The first call compiles (JAX); the second sets
    the run length and how many runs fit the budget.
    """
    values, reps, calls = {}, {}, {}
    for name, step in methods.items():
        values[name] = step()
        started = time.perf_counter()
        step()
        second = max(time.perf_counter() - started, 1e-6)
        calls[name] = max(1, int(run_s / second))
        reps[name] = max(1, min(max_reps, int(budget_s / (second * calls[name]))))
    times: dict[str, list[float]] = {name: [] for name in methods}
    for rep in range(max(reps.values())):
        for name, step in methods.items():
            if rep < reps[name]:
                started = time.perf_counter()
                for _ in range(calls[name]):
                    step()
                times[name].append((time.perf_counter() - started) / calls[name])
    return times, values


def adam_training(
    loss_and_grad: Callable[[np.ndarray, np.ndarray], Any],
    start: np.ndarray,
    n_rows: int,
    batch: int | None,
    steps: int,
    seed: int,
) -> float:
    """100 Adam steps as the classifier takes them (same update); returns the wall time."""
    rng = np.random.default_rng(seed)
    weights = start.copy()
    first, second = np.zeros_like(weights), np.zeros_like(weights)
    started = time.perf_counter()
    for t in range(1, steps + 1):
        rows = (
            np.arange(n_rows)
            if batch is None or batch >= n_rows
            else np.sort(rng.choice(n_rows, batch, replace=False))
        )
        _, gradient = loss_and_grad(weights, rows)
        gradient = np.asarray(gradient)
        first = 0.9 * first + 0.1 * gradient
        second = 0.999 * second + 0.001 * gradient**2
        size = 0.1 * (0.1 + 0.45 * (1 + np.cos(np.pi * (t - 1) / steps)))
        weights = weights - size * (first / (1 - 0.9**t)) / (
            np.sqrt(second / (1 - 0.999**t)) + 1e-8
        )
    return time.perf_counter() - started


def ours_training(model: Model, batch: int | None, steps: int, seed: int) -> float:
    from qmlops import QuantumClassifier

    classifier = QuantumClassifier(
        feature_map="z",
        ansatz="efficient_su2",
        entanglement="reverse_linear",
        # The model PennyLane runs here: one upload, the parity (Hamming-weight) readout.
        readout="hamming_weight",
        reuploads=1,
        optimizer="adam",
        maxiter=steps,
        learning_rate=0.1,
        batch_size=batch,
        random_state=seed,
    )
    classifier.fit(model.X, model.y)
    assert classifier.gradient_ == "adjoint"
    return float(classifier.fit_time_)


def training(
    model: Model,
    name: str,
    loss_and_grad: Callable[..., Any] | None,
    batch: int | None,
    steps: int,
    seed: int,
) -> float:
    """Wall time of one method's training."""
    if loss_and_grad is None:
        return ours_training(model, batch, steps, seed)
    return adam_training(
        lambda weights, rows: loss_and_grad(weights, model.X[rows], model.y[rows]),
        model.weights,
        model.X.shape[0],
        batch,
        steps,
        seed,
    )


# -- the table ----------------------------------------------------------------------------


def fmt(seconds: float) -> str:
    if seconds >= 10:
        return f"{seconds:.0f} s"
    if seconds >= 1:
        return f"{seconds:.1f} s"
    if seconds >= 0.01:
        return f"{seconds * 1e3:.0f} ms"
    return f"{seconds * 1e3:.2g} ms"


def spread(times: list[float]) -> str:
    median = statistics.median(times)
    if len(times) == 1:
        return f"{fmt(median)} (1 run)"
    return f"{fmt(median)} ({fmt(min(times))}–{fmt(max(times))}, {len(times)} runs)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny smoke run; writes nothing")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--output", type=Path, default=None, help="results file to update")
    parser.add_argument(
        "--budget", type=float, default=4.0, help="seconds of repetitions per method and size"
    )
    args = parser.parse_args(argv)
    started = time.perf_counter()
    sizes = [4] if args.quick else [4, 8, 12, 16]
    batches: list[int | None] = [48, None]
    training_sizes = {4} if args.quick else {4, 8, 12}
    train_steps = 5 if args.quick else 100
    budget = 0.5 if args.quick else args.budget
    max_reps = 3 if args.quick else 9
    given = sys.argv[1:] if argv is None else argv
    command = " ".join(["python benchmarks/gradient_speed.py", *given])
    output = args.output or (None if args.quick else RESULTS)

    step_rows: list[list[str]] = []
    train_rows: list[list[str]] = []
    notes: list[str] = []
    verdicts: list[str] = []

    def report(complete: bool) -> None:
        text = render(step_rows, train_rows, notes, verdicts, command)
        text += f"\n\nWhole benchmark: {time.perf_counter() - started:.0f} s."
        if not complete:
            text += " INCOMPLETE: the run was still going when this was written."
        if output is not None:
            write_section(text, output, (BEGIN, END))
        else:
            print(text)

    for n_qubits in sizes:
        model = make_model(n_qubits, args.seed)
        n_rows = model.X.shape[0]
        jax_grad, jax_probabilities = pennylane_jax(model)
        lightning_grad, lightning_probabilities = pennylane_lightning(model)
        for batch in batches:
            rows = np.arange(n_rows if batch is None else min(batch, n_rows))
            label = f"{n_qubits} qubits, {model.spec.n_weights} weights, batch {rows.shape[0]}"
            print(label, flush=True)
            methods: dict[str, Callable[[], float]] = {
                "forward": ours_forward(model, rows),
                OURS: ours_adjoint(model, rows),
            }
            skips: dict[str, str] = {}
            if n_qubits < 12 or (n_qubits == 12 and batch is not None):
                methods[SHIFT] = ours_parameter_shift(model, rows)
            else:
                skips[SHIFT] = "not run: 2P + 1 forward passes per step, minutes at this size"
            # JAX's backprop keeps every gate's output for the whole batch.
            tape_bytes = 16 * 2**n_qubits * rows.shape[0] * (len(model.ansatz_ops) + 2 * n_qubits)
            if tape_bytes > 8 * 2**30:
                skips[JAX] = f"not run: its backprop tape would need ~{tape_bytes / 2**30:.0f} GiB"
            else:
                error = check_probabilities(model, jax_probabilities, rows)
                assert error < 1e-9, f"PennyLane JAX differs from ours by {error}"
                notes.append(f"{label}: JAX probabilities within {error:.1e} of ours")
                methods[JAX] = pennylane_step(jax_grad, model, rows, is_jax=True)
            if n_qubits >= 12 and batch is None:
                skips[LIGHTNING] = "not run: one adjoint tape per sample, minutes per step here"
            else:
                error = check_probabilities(model, lightning_probabilities, rows)
                assert error < 1e-9, f"PennyLane lightning differs from ours by {error}"
                notes.append(f"{label}: lightning probabilities within {error:.1e} of ours")
                methods[LIGHTNING] = pennylane_step(lightning_grad, model, rows, is_jax=False)
            times, losses = timed(methods, budget, max_reps)
            for name in methods:
                print(f"  {name}: {spread(times[name])}", flush=True)
            for name in (SHIFT, JAX, LIGHTNING):
                if name in losses:
                    assert abs(losses[name] - losses[OURS]) < 1e-9, (name, losses)
            forward = statistics.median(times["forward"])
            ours = statistics.median(times[OURS])
            measured = [(statistics.median(times[n]), n) for n in (JAX, LIGHTNING) if n in times]
            for name in (OURS, SHIFT, JAX, LIGHTNING):
                if name not in times:
                    step_rows.append([label, name, skips.get(name, ""), "", ""])
                    continue
                median = statistics.median(times[name])
                step_rows.append(
                    [
                        label,
                        name,
                        spread(times[name]),
                        f"{median / forward:.1f}x",
                        f"{median / ours:.2f}x",
                    ]
                )
            against = "no PennyLane method ran"
            if measured:
                best = min(measured)
                against = (
                    f"best PennyLane measured ({best[1]}) {fmt(best[0])}: "
                    f"{best[0] / ours:.1f}x ours "
                    f"({'meets' if best[0] / ours >= 3 else 'misses'} the 3x goal)"
                )
            verdicts.append(
                f"{label}: ours {fmt(ours)} per step; {against}; gradient = "
                f"{ours / forward:.1f} forward passes "
                f"({'meets' if ours / forward <= 4 else 'misses'} the 4x goal)"
            )
            if n_qubits in training_sizes and (batch is not None or n_qubits <= 8):
                trained: list[tuple[str, Any]] = [(OURS, None), (JAX, jax_grad)]
                if n_qubits == 4 and batch is not None:
                    trained.append((LIGHTNING, lightning_grad))
                for name, grad in trained:
                    seconds = training(model, name, grad, batch, train_steps, args.seed)
                    print(f"  {train_steps} steps {name}: {fmt(seconds)}", flush=True)
                    train_rows.append([label, name, fmt(seconds)])
            report(complete=False)
    report(complete=True)
    return 0


def render(
    step_rows: list[list[str]],
    train_rows: list[list[str]],
    notes: list[str],
    verdicts: list[str],
    command: str,
) -> str:
    import jax
    import pennylane

    return (
        "## Gradient speed (`benchmarks/gradient_speed.py`)\n\n"
        + machine_line(command)
        + f" PennyLane {pennylane.__version__}, JAX {jax.__version__}.\n\n"
        "One model for every method: Z feature map (reps 1) + EfficientSU2 (reps 2 up to 4 "
        "qubits, 3 above), reverse-linear entanglement, parity readout, mean cross-entropy, "
        "breast_cancer reduced by PCA to one feature per qubit (455 training samples). "
        "Before timing, every PennyLane circuit's class probabilities were checked against "
        "ours at the same weights, and every method's loss against ours (1e-9).\n\n"
        "### Loss + exact gradient, one optimizer step\n\n"
        "Wall time per call, median (min–max) over runs, after two warm-up calls (JAX compiles "
        "in the first). A run is about 50 ms of back-to-back calls (at least one), as a "
        "training takes its steps; the methods of one size take turns, run by run. `x forward` "
        "divides by one of our forward passes on the same samples, `x ours` by our adjoint "
        "gradient.\n\n"
        + markdown_table(["size", "method", "s per step", "x forward", "x ours"], step_rows)
        + "\n\n"
        + FORWARD_NOTE
        + "\n\n"
        + "\n".join(f"- {line}" for line in verdicts)
        + "\n\n### 100 Adam steps\n\n"
        "Ours: `QuantumClassifier(optimizer='adam', maxiter=100)` `fit` time (encoding, the "
        "per-step records and the final full-batch record included). PennyLane: the "
        "same Adam update around its loss + gradient from the same initial weights (JAX "
        "compilation excluded: it ran in the per-step rows). lightning.qubit trains only at "
        "4 qubits, batch 48: elsewhere 100 of its steps take many minutes (see its per-step "
        "rows).\n\n"
        + markdown_table(["size", "method", "wall time"], train_rows)
        + "\n\nProbability checks: "
        + "; ".join(notes)
        + "."
    )


if __name__ == "__main__":
    sys.exit(main())
