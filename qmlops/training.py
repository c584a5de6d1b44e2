"""Optimizers for the variational weights: Adam (exact gradients), SPSA and COBYLA.

Each optimizer step makes ONE batched evaluator call: the current weights (on the training and
the validation samples) plus, for SPSA, the two perturbed points, or for Adam with parameter
shift all ``2P`` shifted points of the circuit's ``P`` weights. Adam's other gradient, the
adjoint method of the exact numpy engine, needs only the current point: one forward pass that
keeps each layer's input and one backward sweep give the gradient of every weight. The loss is
the mean cross-entropy of the class probabilities.

The weights the optimizers see are the circuit's followed by the readout head's (none for the
Hamming-weight readout; see :mod:`qmlops.readout`). Both of Adam's gradients shift or sweep the
circuit's weights only and reach the head's by the chain rule through the softmax.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

import numpy as np
from scipy.optimize import minimize

from qmlops.checkpoint import CheckpointStore
from qmlops.errors import ConfigurationError
from qmlops.simulation import CircuitEvaluator, ProbabilityCotangent

OptimizerName = Literal["adam", "spsa", "cobyla"]
OPTIMIZERS: tuple[str, ...] = get_args(OptimizerName)
GradientName = Literal["auto", "adjoint", "parameter_shift"]
GRADIENTS: tuple[str, ...] = get_args(GradientName)

_EPSILON = 1e-10
_SHIFT = np.pi / 2


@dataclass
class IterationRecord:
    """Metrics of one optimizer iteration, measured at the weights it started from."""

    iteration: int
    loss: float
    train_accuracy: float
    validation_accuracy: float | None


@dataclass
class TrainingResult:
    """Final weights and the per-iteration history of a training run."""

    weights: np.ndarray
    history: list[IterationRecord] = field(default_factory=list)
    resumed_from: int = 0


ProgressCallback = Callable[[IterationRecord], None]


class _BudgetSpent(Exception):
    """Raised inside COBYLA's objective once ``maxiter`` evaluations are spent."""


def cross_entropy(probabilities: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Mean cross-entropy over samples for each weight point.

    Args:
        probabilities: Class probabilities ``(M, N, K)``.
        targets: Class indices ``(N,)``.

    Returns:
        Loss per weight point ``(M,)``.
    """
    picked = probabilities[:, np.arange(targets.shape[0]), targets]
    return np.asarray(-np.log(np.clip(picked, _EPSILON, 1.0)).mean(axis=1))


def cross_entropy_cotangent(targets: np.ndarray) -> ProbabilityCotangent:
    """``dL/dp`` of the mean cross-entropy of ``len(targets)`` samples (see :func:`cross_entropy`).

    The derivative is taken at the clipped probability, as the parameter-shift rule of
    :func:`optimize` takes it, so both gradients agree everywhere.
    """
    n_samples = targets.shape[0]

    def cotangent(probabilities: np.ndarray, positions: np.ndarray) -> np.ndarray:
        result = np.zeros_like(probabilities)
        picked_rows = np.arange(positions.shape[0])
        picked = np.clip(probabilities[picked_rows, targets[positions]], _EPSILON, 1.0)
        result[picked_rows, targets[positions]] = -1.0 / (n_samples * picked)
        return result

    return cotangent


class Objective:
    """Evaluate weight points on the training data (and the current point on validation data).

    Args:
        evaluator: The circuit evaluator.
        features: Training features ``(N, n_qubits)``.
        targets: Training class indices ``(N,)``.
        validation: Optional ``(features, targets)`` evaluated at the first point of each call.
        batch_size: Training rows per call (a fresh seeded mini-batch each call); ``None``
            evaluates all rows.
        rng: Draws the mini-batches.
    """

    def __init__(
        self,
        evaluator: CircuitEvaluator,
        features: np.ndarray,
        targets: np.ndarray,
        validation: tuple[np.ndarray, np.ndarray] | None = None,
        batch_size: int | None = None,
        rng: np.random.Generator | None = None,
    ) -> None:
        self.evaluator = evaluator
        self.features = features
        self.all_targets = targets
        self.targets = targets
        self.validation = validation
        self.batch_size = batch_size
        self.rng = rng or np.random.default_rng(0)

    def next_batch(self) -> None:
        """Draw the training rows used by the following calls (resampled every step)."""
        n_rows = self.all_targets.shape[0]
        if self.batch_size is None or self.batch_size >= n_rows:
            self.rows = None
            self.targets = self.all_targets
            return
        self.rows = np.sort(self.rng.choice(n_rows, size=self.batch_size, replace=False))
        self.targets = self.all_targets[self.rows]

    rows: np.ndarray | None = None

    def __call__(self, points: np.ndarray) -> tuple[np.ndarray, IterationRecord]:
        """Evaluate ``points (M, P)`` in one call.

        Returns:
            Training probabilities ``(M, N, K)`` and the record for ``points[0]``.
        """
        requests: list[tuple[np.ndarray, ...]] = [
            (self.features, points) if self.rows is None else (self.features, points, self.rows)
        ]
        if self.validation is not None:
            requests.append((self.validation[0], points[:1]))
        results = self.evaluator.class_probabilities(requests)  # type: ignore[arg-type]
        probabilities = results[0]
        record = self._record(
            probabilities[0], results[1][0] if self.validation is not None else None
        )
        return probabilities, record

    def loss_gradient(self, weights: np.ndarray) -> tuple[np.ndarray, IterationRecord]:
        """The exact gradient of the loss at ``weights (P,)`` by the adjoint method.

        Returns:
            ``dL/dθ (P,)`` and the record for ``weights``.
        """
        requests = [] if self.validation is None else [(self.validation[0], weights[None, :])]
        probabilities, gradient, others = self.evaluator.loss_gradient(
            self.features, weights, cross_entropy_cotangent(self.targets), self.rows, requests
        )
        return gradient, self._record(probabilities, others[0][0] if others else None)

    def parameter_shift_gradient(self, weights: np.ndarray) -> tuple[np.ndarray, IterationRecord]:
        """The exact gradient of the loss at ``weights (P,)`` by the parameter-shift rule.

        The readout values are expectation values, so ``dv/dθ_j = (v(θ + π/2 e_j) -
        v(θ - π/2 e_j)) / 2`` for every circuit weight; the ``2P_c + 1`` circuit points (and
        the validation samples) go in one evaluator call, and the loss reaches them and the
        head's weights through :meth:`~qmlops.readout.ClassReadout.backward`.

        Returns:
            ``dL/dθ (P,)`` and the record for ``weights``.
        """
        readout = self.evaluator.class_readout
        n_circuit = self.evaluator.spec.n_circuit_weights
        circuit, head = weights[:n_circuit], weights[n_circuit:]
        shifts = np.concatenate([np.eye(n_circuit), -np.eye(n_circuit)]) * _SHIFT
        points = np.concatenate([circuit[None, :], circuit[None, :] + shifts])
        requests: list[tuple[np.ndarray, ...]] = [
            (self.features, points) if self.rows is None else (self.features, points, self.rows)
        ]
        if self.validation is not None:
            requests.append((self.validation[0], circuit[None, :]))
        results = self.evaluator.readout_values(requests)  # type: ignore[arg-type]
        values = results[0]  # (2P_c + 1, N, R)
        probabilities = readout.probabilities(values[:1], head[None])[0]
        validation = None
        if self.validation is not None:
            validation = readout.probabilities(results[1][:1], head[None])[0]
        rows = np.arange(self.targets.shape[0])
        value_cotangent, head_gradient = readout.backward(
            values[0], head, cross_entropy_cotangent(self.targets)(probabilities, rows)
        )
        shifted = (values[1 : n_circuit + 1] - values[n_circuit + 1 :]) / 2.0  # (P_c, N, R)
        circuit_gradient = np.einsum("jnr,nr->j", shifted, value_cotangent)
        gradient = np.concatenate([circuit_gradient, head_gradient])
        return gradient, self._record(probabilities, validation)

    def _record(self, probabilities: np.ndarray, validation: np.ndarray | None) -> IterationRecord:
        """The record of one weight point: training ``(N, K)``, validation probabilities."""
        validation_accuracy = None
        if self.validation is not None and validation is not None:
            predicted = validation.argmax(axis=1)
            validation_accuracy = float(np.mean(predicted == self.validation[1]))
        return IterationRecord(
            iteration=0,
            loss=float(cross_entropy(probabilities[None], self.targets)[0]),
            train_accuracy=float(np.mean(probabilities.argmax(axis=1) == self.targets)),
            validation_accuracy=validation_accuracy,
        )


def steps_per_iteration(optimizer: str, n_weights: int, gradient: str = "parameter_shift") -> int:
    """Weight points evaluated per iteration (for resource estimates).

    ``n_weights`` counts the circuit's weights (the parameter-shift rule shifts those only).
    Adam's adjoint gradient evaluates the current point only (its backward sweep is counted
    in the memory plan, not here).
    """
    if optimizer == "adam" and gradient == "adjoint":
        return 1
    return {"adam": 2 * n_weights + 1, "spsa": 3, "cobyla": 1}[optimizer]


def optimize(
    objective: Objective,
    initial_weights: np.ndarray,
    *,
    optimizer: str,
    maxiter: int,
    learning_rate: float,
    rng: np.random.Generator,
    callback: ProgressCallback | None = None,
    checkpoint: CheckpointStore | None = None,
    gradient: str = "parameter_shift",
) -> TrainingResult:
    """Train the weights.

    The history holds ``maxiter + 1`` records: record 0 is the initial point and record ``t``
    the point after ``t`` iterations (for COBYLA, ``t`` objective evaluations).

    Args:
        objective: Batched objective.
        initial_weights: Starting point ``(P,)``.
        optimizer: ``"adam"``, ``"spsa"`` or ``"cobyla"``.
        maxiter: Number of iterations.
        learning_rate: Adam step size, SPSA's initial gain, COBYLA's initial trust radius.
        rng: Randomness for SPSA's perturbations.
        callback: Called with every record as it is produced (not for records restored
            from a checkpoint).
        checkpoint: Where to snapshot the state every ``checkpoint.every`` iterations and
            whence to resume (Adam and SPSA; COBYLA's state lives inside SciPy and always
            starts afresh).
        gradient: Adam's gradient: ``"parameter_shift"`` (any evaluator) or ``"adjoint"``
            (the exact numpy engine; the same numbers from one forward and one backward pass).

    Returns:
        The final weights and the history.

    Raises:
        ConfigurationError: For an unknown optimizer or gradient, or an adjoint gradient on an
            evaluator without one.
    """
    if optimizer not in OPTIMIZERS:
        raise ConfigurationError(f"unknown optimizer {optimizer!r}; choose one of {OPTIMIZERS}")
    if gradient not in ("parameter_shift", "adjoint"):
        raise ConfigurationError(
            f"unknown gradient {gradient!r}; choose 'parameter_shift' or 'adjoint'"
        )
    if gradient == "adjoint" and not objective.evaluator.supports_adjoint:
        raise ConfigurationError("the adjoint gradient needs the exact numpy engine")
    progress = _Progress(objective, rng, callback, checkpoint if optimizer != "cobyla" else None)
    weights = np.array(initial_weights, dtype=np.float64)
    if optimizer == "cobyla":
        weights = _cobyla(objective, weights, maxiter, learning_rate, progress.record)
    elif optimizer == "adam":
        weights = _adam(objective, weights, maxiter, learning_rate, progress, gradient)
    else:
        weights = _spsa(objective, weights, maxiter, learning_rate, rng, progress)
    return TrainingResult(
        weights=weights, history=progress.history, resumed_from=progress.resumed_from
    )


class _Progress:
    """History, progress callback and checkpoints of one :func:`optimize` call.

    A snapshot holds everything the next iteration depends on: iterations done, weights,
    optimizer moments, history (in the store's log), both random generators and the
    evaluator's counters, so a resumed run repeats an uninterrupted one exactly (for exact
    simulation).
    """

    def __init__(
        self,
        objective: Objective,
        rng: np.random.Generator,
        callback: ProgressCallback | None,
        checkpoint: CheckpointStore | None,
    ) -> None:
        self.objective = objective
        self.rng = rng
        self.callback = callback
        self.checkpoint = checkpoint
        self.history: list[IterationRecord] = []
        self.logged = 0  # history records already in the checkpoint log
        self.resumed_from = 0

    def record(self, entry: IterationRecord) -> None:
        entry.iteration = len(self.history)
        self.history.append(entry)
        if self.callback is not None:
            self.callback(entry)

    def save(self, iteration: int, last: int, weights: np.ndarray, **moments: np.ndarray) -> None:
        if self.checkpoint is None or not self.checkpoint.due(iteration, last):
            return
        counters = self.objective.evaluator.counters
        state = {
            "weights": weights.tolist(),
            "moments": {name: value.tolist() for name, value in moments.items()},
            "rng": self.rng.bit_generator.state,
            "batch_rng": self.objective.rng.bit_generator.state,
            "counters": [counters.primitive_calls, counters.circuit_evaluations],
        }
        # The history goes to the store's append-only log: only the records since the last
        # snapshot (vars(): the records hold only scalars; asdict() deep-copies).
        added = [dict(vars(entry)) for entry in self.history[self.logged :]]
        self.checkpoint.save(iteration, state, log=added)
        self.logged = len(self.history)

    def resume(self) -> tuple[int, np.ndarray, dict[str, np.ndarray]] | None:
        """Restore the newest good snapshot; ``None`` when there is none."""
        found = None if self.checkpoint is None else self.checkpoint.load_latest()
        if found is None:
            return None
        iteration, state, history = found
        self.history = [IterationRecord(**entry) for entry in history]
        self.logged = len(self.history)
        # Restore the batch generator first: it may be the same object as `rng`.
        self.objective.rng.bit_generator.state = _plain(state["batch_rng"])
        self.rng.bit_generator.state = _plain(state["rng"])
        counters = self.objective.evaluator.counters
        counters.primitive_calls, counters.circuit_evaluations = state["counters"]
        self.resumed_from = iteration
        moments = {name: np.asarray(value) for name, value in state["moments"].items()}
        return iteration, np.asarray(state["weights"], dtype=np.float64), moments


def _plain(value: Any) -> Any:
    return dict(value) if isinstance(value, dict) else value


def _adam(
    objective: Objective,
    weights: np.ndarray,
    maxiter: int,
    learning_rate: float,
    progress: _Progress,
    gradient_method: str,
) -> np.ndarray:
    record = progress.record
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    n_weights = weights.shape[0]
    first_moment = np.zeros(n_weights)
    second_moment = np.zeros(n_weights)
    done = 0
    resumed = progress.resume()
    if resumed is not None:
        done, weights, moments = resumed
        first_moment, second_moment = moments["first"], moments["second"]
    for t in range(done + 1, maxiter + 1):
        objective.next_batch()
        if gradient_method == "adjoint":
            gradient, entry = objective.loss_gradient(weights)
        else:
            gradient, entry = objective.parameter_shift_gradient(weights)
        record(entry)
        first_moment = beta1 * first_moment + (1 - beta1) * gradient
        second_moment = beta2 * second_moment + (1 - beta2) * gradient**2
        corrected_first = first_moment / (1 - beta1**t)
        corrected_second = second_moment / (1 - beta2**t)
        # Cosine decay to a tenth of the step size: mini-batch noise would otherwise leave
        # the final weights wherever the last noisy steps threw them.
        step_size = learning_rate * (0.1 + 0.45 * (1 + np.cos(np.pi * (t - 1) / maxiter)))
        weights = weights - step_size * corrected_first / (np.sqrt(corrected_second) + eps)
        progress.save(t, maxiter, weights, first=first_moment, second=second_moment)
    objective.batch_size = None
    objective.next_batch()
    record(objective(weights[None, :])[1])
    return weights


def _spsa(
    objective: Objective,
    weights: np.ndarray,
    maxiter: int,
    learning_rate: float,
    rng: np.random.Generator,
    progress: _Progress,
) -> np.ndarray:
    record = progress.record
    # Spall's standard gain sequences (alpha=0.602, gamma=0.101, stability constant 10%).
    perturbation, stability = 0.1, 0.1 * maxiter
    done = 0
    resumed = progress.resume()
    if resumed is not None:
        done, weights, _ = resumed
    for k in range(done, maxiter):
        gain = learning_rate / (k + 1 + stability) ** 0.602
        size = perturbation / (k + 1) ** 0.101
        objective.next_batch()
        delta = rng.choice([-1.0, 1.0], size=weights.shape[0])
        points = np.stack([weights, weights + size * delta, weights - size * delta])
        probabilities, entry = objective(points)
        record(entry)
        losses = cross_entropy(probabilities, objective.targets)
        gradient = (losses[1] - losses[2]) / (2 * size) * delta
        weights = weights - gain * gradient
        progress.save(k + 1, maxiter, weights)
    objective.batch_size = None
    objective.next_batch()
    record(objective(weights[None, :])[1])
    return weights


def _cobyla(
    objective: Objective,
    weights: np.ndarray,
    maxiter: int,
    learning_rate: float,
    record: Callable[[IterationRecord], None],
) -> np.ndarray:
    best: dict[str, object] = {}
    evaluations = [0]

    def loss(point: np.ndarray) -> float:
        if evaluations[0] >= maxiter:
            raise _BudgetSpent
        evaluations[0] += 1
        probabilities, entry = objective(point[None, :])
        record(entry)
        if "loss" not in best or entry.loss < float(best["loss"]):  # type: ignore[arg-type]
            best["loss"], best["weights"] = entry.loss, point.copy()
        return entry.loss

    # COBYLA's first evaluation is the initial point: maxiter evaluations give maxiter + 1
    # records once the final point is measured below.
    # SciPy raises COBYLA's evaluation cap to at least n + 2; the budget is enforced in `loss`.
    cap = max(maxiter, weights.shape[0] + 2)
    try:
        minimize(loss, weights, method="COBYLA", options={"maxiter": cap, "rhobeg": learning_rate})
    except _BudgetSpent:
        pass
    final = np.asarray(best.get("weights", weights), dtype=np.float64)
    record(objective(final[None, :])[1])
    return final
