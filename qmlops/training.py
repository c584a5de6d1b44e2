"""Optimizers for the variational weights: Adam and L-BFGS (exact gradients), SPSA and COBYLA.

Each optimizer step makes ONE batched evaluator call: the current weights (on the training and
the validation samples) plus, for SPSA, the two perturbed points, or for Adam with parameter
shift all ``2P`` shifted points of the circuit's ``P`` weights. Adam's other gradient, the
adjoint method of the exact numpy engine, needs only the current point: one forward pass that
keeps each layer's input and one backward sweep give the gradient of every weight. L-BFGS
(SciPy's L-BFGS-B, full batch) takes the same loss and gradient, one batched call per
function-and-gradient evaluation; its line search may evaluate a few points per iteration. The
loss is the mean cross-entropy of the class probabilities, each sample's term optionally
multiplied by its class's weight (:func:`class_weights`).

The weights the optimizers see are the circuit's followed by the readout head's (none for the
Hamming-weight readout; see :mod:`qmlops.readout`). Both of Adam's gradients shift or sweep the
circuit's weights only and reach the head's by the chain rule through the softmax.

Early stopping (:class:`EarlyStopping`) watches the validation loss of the point each
iteration measures and keeps the best weights; Adam's step size follows a schedule
(:func:`scheduled_learning_rate`).
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

OptimizerName = Literal["adam", "spsa", "cobyla", "lbfgs"]
OPTIMIZERS: tuple[str, ...] = get_args(OptimizerName)
GRADIENT_OPTIMIZERS: tuple[str, ...] = ("adam", "lbfgs")
"""Optimizers that take an exact gradient (adjoint or parameter shift)."""
GradientName = Literal["auto", "adjoint", "parameter_shift"]
GRADIENTS: tuple[str, ...] = get_args(GradientName)
ScheduleName = Literal["cosine", "constant", "exponential"]
SCHEDULES: tuple[str, ...] = get_args(ScheduleName)
ClassWeightName = Literal["balanced"]
CLASS_WEIGHTS: tuple[str, ...] = get_args(ClassWeightName)

LBFGS_EVALUATIONS_PER_ITERATION = 3
"""L-BFGS's budget of function-and-gradient evaluations per iteration (its line search
usually needs one or two); the size guard plans for it and training stops when it is spent."""

_EPSILON = 1e-10
_SHIFT = np.pi / 2


@dataclass
class IterationRecord:
    """Metrics of one optimizer iteration, measured at the weights it started from."""

    iteration: int
    loss: float
    train_accuracy: float
    validation_accuracy: float | None
    validation_loss: float | None = None


@dataclass
class TrainingResult:
    """Final weights and the per-iteration history of a training run."""

    weights: np.ndarray
    history: list[IterationRecord] = field(default_factory=list)
    resumed_from: int = 0
    iterations: int = 0
    best_iteration: int | None = None
    stopped_early: bool = False


ProgressCallback = Callable[[IterationRecord], None]


class _BudgetSpent(Exception):
    """Raised inside COBYLA's objective once ``maxiter`` evaluations are spent."""


def class_weights(class_weight: str | None, targets: np.ndarray, n_classes: int) -> np.ndarray:
    """Each class's weight in the loss, scikit-learn's semantics.

    Args:
        class_weight: ``None`` (every class weighs 1) or ``"balanced"``:
            ``n_samples / (n_classes * count(class))``, so every class contributes the same
            total weight and the weights of all samples still sum to ``n_samples``.
        targets: Training class indices ``(N,)``, every class present.
        n_classes: Number of classes.

    Returns:
        Weights ``(n_classes,)``.

    Raises:
        ConfigurationError: For an unknown ``class_weight``.
    """
    if class_weight is None:
        return np.ones(n_classes)
    if class_weight != "balanced":
        raise ConfigurationError(
            f"unknown class_weight {class_weight!r}; choose None or {', '.join(CLASS_WEIGHTS)}"
        )
    counts = np.bincount(targets, minlength=n_classes).astype(np.float64)
    return targets.shape[0] / (n_classes * np.maximum(counts, 1.0))


def cross_entropy(
    probabilities: np.ndarray, targets: np.ndarray, sample_weights: np.ndarray | None = None
) -> np.ndarray:
    """Mean (weighted) cross-entropy over samples for each weight point.

    ``L = (1/N) sum_i w_i * -log p_i[y_i]``, with ``w_i = 1`` without weights (the plain mean).

    Args:
        probabilities: Class probabilities ``(M, N, K)``.
        targets: Class indices ``(N,)``.
        sample_weights: Optional weight of each sample ``(N,)`` (its class's weight).

    Returns:
        Loss per weight point ``(M,)``.
    """
    picked = probabilities[:, np.arange(targets.shape[0]), targets]
    # np.clip's and mean's Python wrappers cost more than the ufuncs on a small batch.
    terms = np.log(np.minimum(np.maximum(picked, _EPSILON), 1.0))
    if sample_weights is not None:
        terms *= sample_weights[None, :]
    return np.asarray(terms.sum(axis=1) / -targets.shape[0])


def cross_entropy_cotangent(
    targets: np.ndarray, sample_weights: np.ndarray | None = None
) -> ProbabilityCotangent:
    """``dL/dp`` of the mean cross-entropy of ``len(targets)`` samples (see :func:`cross_entropy`).

    The derivative is taken at the clipped probability, as the parameter-shift rule of
    :func:`optimize` takes it, so both gradients agree everywhere.

    Args:
        targets: Class indices ``(N,)``.
        sample_weights: Optional weight of each sample ``(N,)``, as in :func:`cross_entropy`.
    """
    n_samples = targets.shape[0]
    weights = np.ones(n_samples) if sample_weights is None else sample_weights
    scale = weights / -n_samples
    starts = np.arange(n_samples)  # times the class count: where each sample's row starts

    def cotangent(probabilities: np.ndarray, positions: np.ndarray) -> np.ndarray:
        # Flat indices instead of (row, class) pairs: a step at 4 qubits is a few dozen small
        # numpy calls, and two-dimensional fancy indexing is among the slowest of them.
        count, n_classes = probabilities.shape
        result = np.zeros(count * n_classes)
        at = starts[:count] * n_classes + np.take(targets, positions)
        picked = np.take(probabilities, at)  # flat indices into the probabilities
        # np.clip's Python wrappers cost more than the two ufuncs on a small batch.
        np.minimum(np.maximum(picked, _EPSILON, out=picked), 1.0, out=picked)
        result[at] = np.take(scale, positions) / picked
        return result.reshape(count, n_classes)

    return cotangent


def scheduled_learning_rate(
    schedule: str, learning_rate: float, iteration: int, maxiter: int
) -> float:
    """Adam's step size at ``iteration`` (1 to ``maxiter``) of a training of ``maxiter``.

    With ``u = (iteration - 1) / maxiter`` (0 at the first step, just below 1 at the last):

    - ``"constant"``: ``learning_rate``;
    - ``"cosine"`` (default): ``learning_rate * (0.1 + 0.45 * (1 + cos(pi * u)))``, half a
      cosine from the full rate down to a tenth of it;
    - ``"exponential"``: ``learning_rate * 0.1 ** u``, the same endpoints, geometrically.

    Decaying schedules keep mini-batch noise from leaving the final weights wherever the last
    noisy steps threw them. Early stopping does not shorten the schedule: it runs on
    ``maxiter``.

    Raises:
        ConfigurationError: For an unknown schedule.
    """
    if schedule == "constant":
        return learning_rate
    if schedule == "cosine":
        # Written as before the schedules were options, so default runs repeat bit for bit.
        return float(learning_rate * (0.1 + 0.45 * (1 + np.cos(np.pi * (iteration - 1) / maxiter))))
    if schedule == "exponential":
        return float(learning_rate * 0.1 ** ((iteration - 1) / maxiter))
    raise ConfigurationError(
        f"unknown learning_rate_schedule {schedule!r}; choose one of {', '.join(SCHEDULES)}"
    )


class EarlyStopping:
    """Stop when the validation loss has not improved for a while; remember the best weights.

    The monitored number is the validation loss (the same, class-weighted, cross-entropy as
    the training loss, on all validation samples): it moves smoothly where the accuracy of a
    small validation set moves in coarse steps and ties. A record improves on the best when
    its validation loss is below ``best - tol``; after ``n_iter_no_change`` records in a row
    without improvement training stops (scikit-learn's MLPClassifier convention).

    Args:
        n_iter_no_change: Records without improvement before stopping.
        tol: Required improvement.

    Attributes:
        best_loss: Lowest validation loss seen (``inf`` before the first record).
        best_index: History index of the record that measured it (``-1`` before).
        best_weights: The weights it measured.
    """

    def __init__(self, n_iter_no_change: int, tol: float) -> None:
        self.n_iter_no_change = n_iter_no_change
        self.tol = tol
        self.best_loss = float("inf")
        self.best_index = -1
        self.best_weights: np.ndarray | None = None

    def observe(self, index: int, loss: float, weights: np.ndarray) -> bool:
        """Take the record at history ``index``; whether training should stop now."""
        if loss < self.best_loss - self.tol or self.best_weights is None:
            self.best_loss, self.best_index = loss, index
            self.best_weights = np.array(weights, dtype=np.float64)
        return index - self.best_index >= self.n_iter_no_change

    def state(self) -> dict[str, Any]:
        """JSON-able state for a checkpoint."""
        best = None if self.best_weights is None else self.best_weights.tolist()
        return {"loss": self.best_loss, "index": self.best_index, "weights": best}

    def restore(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state`."""
        self.best_loss, self.best_index = float(state["loss"]), int(state["index"])
        weights = state["weights"]
        self.best_weights = None if weights is None else np.asarray(weights, dtype=np.float64)


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
        class_weights: Optional weight of each class in the loss ``(K,)`` (see
            :func:`class_weights`); validation losses use the same weights.
    """

    def __init__(
        self,
        evaluator: CircuitEvaluator,
        features: np.ndarray,
        targets: np.ndarray,
        validation: tuple[np.ndarray, np.ndarray] | None = None,
        batch_size: int | None = None,
        rng: np.random.Generator | None = None,
        class_weights: np.ndarray | None = None,
    ) -> None:
        self.evaluator = evaluator
        self.features = features
        self.all_targets = targets
        self.targets = targets
        self.validation = validation
        self.batch_size = batch_size
        self.rng = rng or np.random.default_rng(0)
        self.class_weights = class_weights

    @property
    def sample_weights(self) -> np.ndarray | None:
        """The loss weight of each current training row (``None``: unweighted)."""
        return None if self.class_weights is None else self.class_weights[self.targets]

    def loss(self, probabilities: np.ndarray) -> np.ndarray:
        """The training loss of probabilities ``(M, N, K)`` on the current rows, per point."""
        return cross_entropy(probabilities, self.targets, self.sample_weights)

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
        cotangent = cross_entropy_cotangent(self.targets, self.sample_weights)
        probabilities, gradient, others = self.evaluator.loss_gradient(
            self.features, weights, cotangent, self.rows, requests
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
            values[0],
            head,
            cross_entropy_cotangent(self.targets, self.sample_weights)(probabilities, rows),
        )
        shifted = (values[1 : n_circuit + 1] - values[n_circuit + 1 :]) / 2.0  # (P_c, N, R)
        circuit_gradient = np.einsum("jnr,nr->j", shifted, value_cotangent)
        gradient = np.concatenate([circuit_gradient, head_gradient])
        return gradient, self._record(probabilities, validation)

    def _record(self, probabilities: np.ndarray, validation: np.ndarray | None) -> IterationRecord:
        """The record of one weight point: training ``(N, K)``, validation probabilities."""
        validation_accuracy = validation_loss = None
        if self.validation is not None and validation is not None:
            targets = self.validation[1]
            predicted = validation.argmax(axis=1)
            validation_accuracy = float(np.mean(predicted == targets))
            weights = None if self.class_weights is None else self.class_weights[targets]
            validation_loss = float(cross_entropy(validation[None], targets, weights)[0])
        return IterationRecord(
            iteration=0,
            loss=float(self.loss(probabilities[None])[0]),
            train_accuracy=float(np.mean(probabilities.argmax(axis=1) == self.targets)),
            validation_accuracy=validation_accuracy,
            validation_loss=validation_loss,
        )


def steps_per_iteration(optimizer: str, n_weights: int, gradient: str = "parameter_shift") -> int:
    """Weight points evaluated per iteration, at most (for resource estimates).

    ``n_weights`` counts the circuit's weights (the parameter-shift rule shifts those only).
    Adam's adjoint gradient evaluates the current point only (its backward sweep is counted
    in the memory plan, not here); L-BFGS makes up to
    :data:`LBFGS_EVALUATIONS_PER_ITERATION` function-and-gradient evaluations per iteration,
    each one point (adjoint) or ``2P + 1`` points (parameter shift).
    """
    per_gradient = 1 if gradient == "adjoint" else 2 * n_weights + 1
    if optimizer == "lbfgs":
        return LBFGS_EVALUATIONS_PER_ITERATION * per_gradient
    if optimizer == "adam":
        return per_gradient
    return {"spsa": 3, "cobyla": 1}[optimizer]


def calls_per_iteration(optimizer: str) -> int:
    """Batched simulator calls per iteration, at most (L-BFGS: one per evaluation)."""
    return LBFGS_EVALUATIONS_PER_ITERATION if optimizer == "lbfgs" else 1


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
    schedule: str = "cosine",
    early_stopping: EarlyStopping | None = None,
) -> TrainingResult:
    """Train the weights.

    The history holds ``maxiter + 1`` records: record 0 is the initial point and record ``t``
    the point after ``t`` iterations (for COBYLA, ``t`` objective evaluations). L-BFGS may end
    sooner, when it converges. With early stopping it ends after the iteration that measured
    the ``n_iter_no_change``-th record without improvement (that iteration's step is not
    taken); when the best weights are not the last measured ones, one more record measures
    them on all training samples, and they are the result.

    Args:
        objective: Batched objective.
        initial_weights: Starting point ``(P,)``.
        optimizer: ``"adam"``, ``"spsa"``, ``"cobyla"`` or ``"lbfgs"``.
        maxiter: Number of iterations.
        learning_rate: Adam step size, SPSA's initial gain, COBYLA's initial trust radius
            (unused by L-BFGS, which searches its own step).
        rng: Randomness for SPSA's perturbations.
        callback: Called with every record as it is produced (not for records restored
            from a checkpoint).
        checkpoint: Where to snapshot the state every ``checkpoint.every`` iterations and
            whence to resume (Adam and SPSA exactly; L-BFGS restarts from the saved weights
            with a fresh curvature memory; COBYLA's state lives inside SciPy and always
            starts afresh).
        gradient: Adam's and L-BFGS's gradient: ``"parameter_shift"`` (any evaluator) or
            ``"adjoint"`` (the exact numpy engine; the same numbers from one forward and one
            backward pass).
        schedule: Adam's step-size schedule (see :func:`scheduled_learning_rate`).
        early_stopping: Stop on the validation loss and keep the best weights (Adam, SPSA,
            L-BFGS; needs the objective's validation data).

    Returns:
        The final weights and the history.

    Raises:
        ConfigurationError: For an unknown optimizer, gradient or schedule, an adjoint
            gradient on an evaluator without one, or early stopping without validation data
            or with COBYLA.
    """
    if optimizer not in OPTIMIZERS:
        raise ConfigurationError(f"unknown optimizer {optimizer!r}; choose one of {OPTIMIZERS}")
    if gradient not in ("parameter_shift", "adjoint"):
        raise ConfigurationError(
            f"unknown gradient {gradient!r}; choose 'parameter_shift' or 'adjoint'"
        )
    if schedule not in SCHEDULES:
        raise ConfigurationError(
            f"unknown learning_rate_schedule {schedule!r}; choose one of {', '.join(SCHEDULES)}"
        )
    if gradient == "adjoint" and not objective.evaluator.supports_adjoint:
        raise ConfigurationError("the adjoint gradient needs the exact numpy engine")
    if early_stopping is not None and (objective.validation is None or optimizer == "cobyla"):
        raise ConfigurationError("early stopping needs validation data and adam, spsa or lbfgs")
    progress = _Progress(
        objective, rng, callback, checkpoint if optimizer != "cobyla" else None, early_stopping
    )
    weights = np.array(initial_weights, dtype=np.float64)
    if optimizer == "cobyla":
        weights = _cobyla(objective, weights, maxiter, learning_rate, progress.record)
    elif optimizer == "adam":
        weights = _adam(objective, weights, maxiter, learning_rate, progress, gradient, schedule)
    elif optimizer == "lbfgs":
        weights = _lbfgs(objective, weights, maxiter, progress, gradient)
    else:
        weights = _spsa(objective, weights, maxiter, learning_rate, rng, progress)
    iterations = len(progress.history) - 1
    weights, restored = progress.keep_best(weights)
    return TrainingResult(
        weights=weights,
        history=progress.history,
        resumed_from=progress.resumed_from,
        iterations=iterations,
        best_iteration=None if early_stopping is None else early_stopping.best_index,
        stopped_early=progress.stopped and iterations < maxiter,
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
        early_stopping: EarlyStopping | None = None,
    ) -> None:
        self.objective = objective
        self.rng = rng
        self.callback = callback
        self.checkpoint = checkpoint
        self.early_stopping = early_stopping
        self.stopped = False
        self.history: list[IterationRecord] = []
        self.logged = 0  # history records already in the checkpoint log
        self.resumed_from = 0

    def record(self, entry: IterationRecord, weights: np.ndarray | None = None) -> None:
        """Append ``entry``; with early stopping, ``weights`` are the point it measured."""
        entry.iteration = len(self.history)
        self.history.append(entry)
        if self.callback is not None:
            self.callback(entry)
        if (
            self.early_stopping is not None
            and weights is not None
            and entry.validation_loss is not None
            and self.early_stopping.observe(entry.iteration, entry.validation_loss, weights)
        ):
            self.stopped = True

    def keep_best(self, weights: np.ndarray) -> tuple[np.ndarray, bool]:
        """The weights to return: early stopping's best, measured once more when not last.

        Returns:
            The weights and whether a record of restored (earlier) weights was added.
        """
        tracker = self.early_stopping
        if tracker is None or tracker.best_weights is None:
            return weights, False
        if tracker.best_index == len(self.history) - 1:
            return tracker.best_weights, False
        self.objective.batch_size = None
        self.objective.next_batch()
        self.record(self.objective(tracker.best_weights[None, :])[1])
        return tracker.best_weights, True

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
        if self.early_stopping is not None:
            state["early_stopping"] = self.early_stopping.state()
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
        if self.early_stopping is not None and "early_stopping" in state:
            self.early_stopping.restore(state["early_stopping"])
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
    schedule: str = "cosine",
) -> np.ndarray:
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
        progress.record(entry, weights)
        if progress.stopped:
            return weights
        first_moment = beta1 * first_moment + (1 - beta1) * gradient
        second_moment = beta2 * second_moment + (1 - beta2) * gradient**2
        corrected_first = first_moment / (1 - beta1**t)
        corrected_second = second_moment / (1 - beta2**t)
        step_size = scheduled_learning_rate(schedule, learning_rate, t, maxiter)
        weights = weights - step_size * corrected_first / (np.sqrt(corrected_second) + eps)
        progress.save(t, maxiter, weights, first=first_moment, second=second_moment)
    objective.batch_size = None
    objective.next_batch()
    progress.record(objective(weights[None, :])[1], weights)
    return weights


def _spsa(
    objective: Objective,
    weights: np.ndarray,
    maxiter: int,
    learning_rate: float,
    rng: np.random.Generator,
    progress: _Progress,
) -> np.ndarray:
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
        progress.record(entry, weights)
        if progress.stopped:
            return weights
        losses = objective.loss(probabilities)
        gradient = (losses[1] - losses[2]) / (2 * size) * delta
        weights = weights - gain * gradient
        progress.save(k + 1, maxiter, weights)
    objective.batch_size = None
    objective.next_batch()
    progress.record(objective(weights[None, :])[1], weights)
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


def _lbfgs(
    objective: Objective,
    weights: np.ndarray,
    maxiter: int,
    progress: _Progress,
    gradient_method: str,
) -> np.ndarray:
    """SciPy's L-BFGS-B on all training rows, with the exact loss gradient.

    Every function-and-gradient evaluation is one batched call (the adjoint method, or all
    ``2P + 1`` parameter-shift points). Record ``k`` measures the iterate after ``k``
    iterations; the records come from the evaluations the line search already made.
    """
    objective.batch_size = None
    objective.next_batch()
    done = 0
    resumed = progress.resume()
    if resumed is not None:
        # SciPy keeps its curvature pairs to itself: a resumed run restarts from the saved
        # weights with an empty memory, so it need not repeat an uninterrupted run exactly.
        done, weights, _ = resumed
    if done >= maxiter:
        return weights
    budget = LBFGS_EVALUATIONS_PER_ITERATION * (maxiter - done) + 1
    measured: dict[bytes, IterationRecord] = {}
    current: dict[str, Any] = {"weights": weights, "iteration": done, "evaluations": 0}

    def loss_and_gradient(point: np.ndarray) -> tuple[float, np.ndarray]:
        if current["evaluations"] >= budget:
            raise _BudgetSpent
        current["evaluations"] += 1
        if gradient_method == "adjoint":
            gradient, entry = objective.loss_gradient(point)
        else:
            gradient, entry = objective.parameter_shift_gradient(point)
        if not progress.history:
            progress.record(entry, point)  # record 0: SciPy evaluates the initial point first
        measured[point.tobytes()] = entry
        return entry.loss, gradient

    def after_iteration(intermediate_result: Any) -> None:
        point = np.array(intermediate_result.x, dtype=np.float64)
        entry = measured.get(point.tobytes())
        if entry is None:  # not an evaluated point (SciPy does not promise one); measure it
            entry = objective(point[None, :])[1]
        measured.clear()  # later iterates are new points
        current["iteration"] += 1
        current["weights"] = point
        progress.record(entry, point)
        progress.save(current["iteration"], maxiter, point)
        if progress.stopped:
            raise StopIteration

    try:
        minimize(
            loss_and_gradient,
            weights,
            jac=True,
            method="L-BFGS-B",
            callback=after_iteration,
            options={"maxiter": maxiter - done, "maxfun": budget},
        )
    except _BudgetSpent:
        pass
    return np.asarray(current["weights"], dtype=np.float64)
