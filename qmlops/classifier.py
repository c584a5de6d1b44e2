"""The variational quantum classifier as a scikit-learn estimator."""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.model_selection import train_test_split
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, check_random_state, validate_data

from qmlops.checkpoint import CheckpointStore
from qmlops.circuits import (
    WEIGHT_PREFIX,
    CircuitSpec,
    ResourceEstimate,
    check_integer,
    check_resources,
    estimate_resources,
)
from qmlops.concurrency import resolve_threads
from qmlops.config import MAX_BATCH_SIZE, MAX_ITERATIONS, MAX_SHOTS, default_ansatz_reps
from qmlops.errors import ConfigurationError, ModelFormatError
from qmlops.simulation import (
    BACKENDS,
    CircuitEvaluator,
    adjoint_states_held,
    cached_states_per_sample,
    planned_backend,
)
from qmlops.training import (
    CLASS_WEIGHTS,
    GRADIENT_OPTIMIZERS,
    GRADIENTS,
    OPTIMIZERS,
    SCHEDULES,
    EarlyStopping,
    IterationRecord,
    Objective,
    ProgressCallback,
    calls_per_iteration,
    class_weights,
    optimize,
    steps_per_iteration,
)

MODEL_FORMAT_VERSION = 1

logger = logging.getLogger(__name__)


class QuantumClassifier(ClassifierMixin, BaseEstimator):
    """Variational quantum classifier: feature map, trainable ansatz, class readout.

    ``__init__`` only stores its arguments; :meth:`fit` validates them, builds the circuits and
    the simulator, and trains. Inputs are encoding angles, one feature per qubit (see
    :func:`qmlops.preprocessing.make_preprocessor`). See :mod:`qmlops.readout` for the readouts.

    By default every qubit's Pauli-Z expectation feeds a trainable softmax layer and the data
    are uploaded twice (``readout="z_softmax"``, ``reuploads=2``), for 150 Adam steps: the
    model-quality benchmark (``make bench-quality``, ``benchmarks/quality.py``) chose them over
    the Hamming-weight readout with one upload, and 150 steps over 100 (with the flows'
    narrower angle range above 4 qubits, :func:`qmlops.config.default_encoding_scale`).

    Args:
        feature_map: ``"zz"``, ``"z"`` or ``"pauli"``.
        feature_map_reps: Repetitions of the feature map.
        ansatz: ``"real_amplitudes"`` or ``"efficient_su2"``.
        ansatz_reps: Repetitions of the ansatz; ``None``: 2 up to 4 qubits, 3 above
            (:func:`qmlops.config.default_ansatz_reps`).
        entanglement: ``"reverse_linear"``, ``"linear"``, ``"full"``, ``"circular"`` or
            ``"pairwise"``.
        reuploads: Data re-uploading: blocks of [feature map, ansatz], each ansatz block with
            its own weights (``reuploads`` times the weights of one ansatz); default ``2``;
            ``1``: the feature map once, then the ansatz. See :mod:`qmlops.circuits`. The
            numpy engine re-uploads the ``z`` and ``zz`` maps; a re-uploaded ``pauli`` map
            runs on Aer.
        readout: ``"z_softmax"`` (default: every qubit's Pauli-Z expectation feeds a
            trainable softmax layer, trained jointly with the circuit), ``"zz_softmax"`` (the
            same with every pair of neighbouring qubits' ``Z_q Z_{q+1}`` added to the layer's
            inputs) or ``"hamming_weight"`` (each measured bitstring votes for class
            ``popcount mod n_classes``).
        optimizer: ``"adam"`` (exact gradients, see ``gradient``), ``"lbfgs"`` (SciPy's
            L-BFGS-B on all samples with the same exact gradient; needs ``shots=None``),
            ``"spsa"`` or ``"cobyla"``.
        maxiter: Optimizer iterations (COBYLA: objective evaluations). L-BFGS makes at most
            3 function-and-gradient evaluations per iteration and may stop sooner when it
            converges.
        learning_rate: Adam step size, SPSA initial gain, COBYLA initial trust radius
            (unused by L-BFGS).
        batch_size: Training samples per Adam/SPSA step (a seeded mini-batch drawn each step);
            ``None`` uses all samples. COBYLA and L-BFGS always use all samples.
        learning_rate_schedule: Adam's step size over the ``maxiter`` steps: ``"cosine"``
            (default) from ``learning_rate`` down to a tenth of it along half a cosine,
            ``"exponential"`` between the same endpoints geometrically, or ``"constant"``
            (see :func:`qmlops.training.scheduled_learning_rate`). SPSA keeps Spall's own
            decaying gains; COBYLA and L-BFGS have no step size to schedule.
        early_stopping: Stop when the validation loss has not improved by ``tol`` for
            ``n_iter_no_change`` iterations and keep the weights with the lowest validation
            loss (Adam, SPSA and L-BFGS). The validation data are those passed to ``fit``,
            else a stratified ``validation_fraction`` of the training data drawn with
            ``random_state`` (and then not trained on).
        validation_fraction: Share of the training data held out for early stopping when
            ``fit`` gets no validation data.
        n_iter_no_change: Iterations without improvement before early stopping.
        tol: Improvement of the validation loss that counts for early stopping.
        class_weight: ``None``, ``"balanced"`` or a dict ``{label: weight}`` (labels left
            out weigh 1): each sample's loss term is multiplied by its class's weight,
            ``n_samples / (n_classes * count(its class))`` in the training data for
            ``"balanced"`` (scikit-learn's semantics), in the loss and in its exact gradient
            alike. The dict form is the estimator's only (the flow configuration offers
            ``None`` and ``"balanced"``).
        shots: ``None`` for exact probabilities, else measurement shots per circuit.
        backend: ``"auto"``, ``"numpy"`` or ``"aer"`` (see :mod:`qmlops.simulation`).
        gradient: Adam's and L-BFGS's gradient. ``"adjoint"``: the adjoint method of the exact numpy
            engine (one forward pass and one backward sweep, whatever the number of weights);
            ``"parameter_shift"``: ``2P + 1`` evaluated weight points per step, for shots and
            Aer; ``"auto"`` (default): adjoint wherever the numpy engine runs, parameter shift
            elsewhere. Both give the same gradient where both apply.
        simulator_threads: Threads the simulation may use. ``0`` (default) means automatic:
            the cores this process may run on, capped by the current threadpoolctl limit
            when ``fit`` starts. To run several trainings at once without oversubscribing,
            fit each inside ``threadpoolctl.threadpool_limits(limits=k)`` (cores divided by
            concurrent trainings) or pass ``simulator_threads=k``: the numpy engine then uses
            at most ``k`` worker threads and Aer gets ``max_parallel_threads=k``. numpy's BLAS
            (used by the numpy engine's matrix product for small circuits) follows the
            threadpoolctl limit only.
        max_memory_bytes: Size guard on statevector memory (``None``: half of this machine).
        max_circuit_evaluations: Size guard on circuit evaluations (``None``: no limit).
        random_state: Seeds the initial weights and the shot sampler.
        callback: Called with an :class:`~qmlops.training.IterationRecord` after each iteration.

    Attributes:
        classes_: Class labels seen in ``fit``.
        n_features_in_: Number of features (= qubits).
        spec_: The :class:`~qmlops.circuits.CircuitSpec` of the trained circuit.
        initial_weights_: Starting weights.
        weights_: Trained weights: the circuit's (``spec_.n_circuit_weights``), then, for the
            ``"z_softmax"`` readout, the head's ``W`` (``n_classes x n_qubits``, row by row)
            and ``b`` (``n_classes``).
        loss_curve_: Training loss at the initial point and after every iteration.
        train_accuracy_curve_: Training accuracy at the same points.
        validation_accuracy_curve_: Validation accuracy at the same points (empty without
            validation data).
        validation_loss_curve_: Validation loss at the same points (empty without
            validation data).
        n_iter_: Iterations run (fewer than ``maxiter`` when early stopping or L-BFGS's
            convergence ended training). When early stopping restored earlier weights, the
            curves hold one more entry: those weights, measured on all training samples.
        best_iteration_: With early stopping, the iteration whose weights were kept (its
            index in the curves); ``None`` without.
        best_validation_loss_: Their validation loss; ``None`` without early stopping.
        stopped_early_: Whether early stopping ended training before ``maxiter``.
        class_weight_: The weight of each class (in ``classes_`` order) in the loss.
        resumed_from_: Iterations restored from a checkpoint (``0``: trained from the start).
        backend_: Engine that ran the simulation (``"numpy"`` or ``"aer"``).
        gradient_: Adam's or L-BFGS's gradient method (``"adjoint"`` or
            ``"parameter_shift"``); ``None`` for the other optimizers.
        circuit_evaluations_: Circuits executed during ``fit``.
        primitive_calls_: Batched simulator calls during ``fit``.
        fit_time_: Wall time of ``fit`` in seconds.
    """

    def __init__(
        self,
        feature_map: str = "z",
        feature_map_reps: int = 1,
        ansatz: str = "efficient_su2",
        ansatz_reps: int | None = None,
        entanglement: str = "reverse_linear",
        reuploads: int = 2,
        readout: str = "z_softmax",
        optimizer: str = "adam",
        maxiter: int = 150,
        learning_rate: float = 0.1,
        batch_size: int | None = 48,
        learning_rate_schedule: str = "cosine",
        early_stopping: bool = False,
        validation_fraction: float = 0.1,
        n_iter_no_change: int = 10,
        tol: float = 1e-4,
        class_weight: str | dict[Any, float] | None = None,
        shots: int | None = None,
        backend: str = "auto",
        gradient: str = "auto",
        simulator_threads: int = 0,
        max_memory_bytes: int | None = None,
        max_circuit_evaluations: int | None = None,
        random_state: int | None = None,
        callback: ProgressCallback | None = None,
    ) -> None:
        self.feature_map = feature_map
        self.feature_map_reps = feature_map_reps
        self.ansatz = ansatz
        self.ansatz_reps = ansatz_reps
        self.entanglement = entanglement
        self.reuploads = reuploads
        self.readout = readout
        self.optimizer = optimizer
        self.maxiter = maxiter
        self.learning_rate = learning_rate
        self.batch_size = batch_size
        self.learning_rate_schedule = learning_rate_schedule
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.tol = tol
        self.class_weight = class_weight
        self.shots = shots
        self.backend = backend
        self.gradient = gradient
        self.simulator_threads = simulator_threads
        self.max_memory_bytes = max_memory_bytes
        self.max_circuit_evaluations = max_circuit_evaluations
        self.random_state = random_state
        self.callback = callback

    # -- validation ---------------------------------------------------------------------

    def _check_params(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ConfigurationError(
                f"unknown optimizer {self.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}"
            )
        if self.backend not in BACKENDS:
            raise ConfigurationError(
                f"unknown backend {self.backend!r}; choose one of {', '.join(BACKENDS)}"
            )
        if self.gradient not in GRADIENTS:
            raise ConfigurationError(
                f"unknown gradient {self.gradient!r}; choose one of {', '.join(GRADIENTS)}"
            )
        if self.gradient == "adjoint" and (self.shots is not None or self.backend == "aer"):
            raise ConfigurationError(
                "gradient='adjoint' needs exact simulation on the numpy engine (shots=None, "
                "backend 'auto' or 'numpy'); use gradient='parameter_shift' or 'auto'"
            )
        if self.optimizer == "lbfgs" and self.shots is not None:
            raise ConfigurationError(
                "optimizer='lbfgs' needs exact gradients (shots=None); sampled losses and "
                "gradients break its line search: use adam or spsa with shots"
            )
        if self.learning_rate_schedule not in SCHEDULES:
            raise ConfigurationError(
                f"unknown learning_rate_schedule {self.learning_rate_schedule!r}; choose one "
                f"of {', '.join(SCHEDULES)}"
            )
        if isinstance(self.class_weight, dict):
            if not all(
                isinstance(value, int | float) and np.isfinite(value) and value >= 0
                for value in self.class_weight.values()
            ):
                raise ConfigurationError(
                    f"class_weight values must be finite numbers >= 0, got {self.class_weight!r}"
                )
        elif self.class_weight is not None and self.class_weight not in CLASS_WEIGHTS:
            raise ConfigurationError(
                f"unknown class_weight {self.class_weight!r}; choose None, "
                f"{', '.join(CLASS_WEIGHTS)} or a dict of label to weight"
            )
        if not isinstance(self.early_stopping, bool | np.bool_):
            raise ConfigurationError(
                f"early_stopping must be True or False, got {self.early_stopping!r}"
            )
        if self.early_stopping and self.optimizer == "cobyla":
            raise ConfigurationError(
                "early_stopping needs optimizer 'adam', 'spsa' or 'lbfgs' (COBYLA already "
                "returns the best point it evaluated)"
            )
        if not (
            isinstance(self.validation_fraction, int | float) and 0 < self.validation_fraction < 1
        ):
            raise ConfigurationError(
                f"validation_fraction must be in (0, 1), got {self.validation_fraction!r}"
            )
        check_integer("n_iter_no_change", self.n_iter_no_change, 1, MAX_ITERATIONS)
        if not (isinstance(self.tol, int | float) and np.isfinite(self.tol) and self.tol >= 0):
            raise ConfigurationError(f"tol must be a finite number >= 0, got {self.tol!r}")
        check_integer("maxiter", self.maxiter, 1, MAX_ITERATIONS)
        check_integer("simulator_threads", self.simulator_threads, 0, 1024)
        if self.batch_size is not None:
            check_integer("batch_size", self.batch_size, 1, MAX_BATCH_SIZE)
        if self.shots is not None:
            check_integer("shots", self.shots, 1, MAX_SHOTS)
        if not (
            isinstance(self.learning_rate, int | float)
            and np.isfinite(self.learning_rate)
            and 0 < self.learning_rate <= 10
        ):
            raise ConfigurationError(
                f"learning_rate must be a number in (0, 10], got {self.learning_rate!r}"
            )

    def _spec(self, n_qubits: int, n_classes: int) -> CircuitSpec:
        return CircuitSpec(
            n_qubits=n_qubits,
            n_classes=n_classes,
            feature_map=self.feature_map,
            feature_map_reps=self.feature_map_reps,
            ansatz=self.ansatz,
            ansatz_reps=(
                default_ansatz_reps(n_qubits) if self.ansatz_reps is None else self.ansatz_reps
            ),
            entanglement=self.entanglement,
            reuploads=self.reuploads,
            readout=self.readout,
        )

    def _evaluator(self, spec: CircuitSpec, seed: int) -> CircuitEvaluator:
        return CircuitEvaluator(
            spec,
            shots=self.shots,
            backend=self.backend,
            seed=seed,
            simulator_threads=self.simulator_threads,
        )

    # -- estimator API ------------------------------------------------------------------

    def fit(
        self,
        X: Any,
        y: Any,
        validation_data: tuple[Any, Any] | None = None,
        checkpoint: CheckpointStore | None = None,
    ) -> QuantumClassifier:
        """Build the circuit for the data and train its weights.

        Args:
            X: Encoding angles ``(n_samples, n_qubits)``.
            y: Class labels (numbers or strings).
            validation_data: Optional ``(X_val, y_val)`` monitored at every iteration.
            checkpoint: Snapshot the training state there and resume from its newest good
                snapshot (Adam and SPSA). Its key must identify this data and these
                parameters; see :func:`qmlops.checkpoint.training_key`.

        Returns:
            The fitted estimator.

        Raises:
            ConfigurationError: For invalid hyper-parameters.
            SizeLimitError: If the job exceeds the size guard.
            ValueError: For invalid data (NaN, wrong shape, a single class).
        """
        started = time.perf_counter()
        X, y = validate_data(self, X, y)
        check_classification_targets(y)
        self.classes_, targets = np.unique(y, return_inverse=True)
        if self.classes_.shape[0] < 2:
            raise ValueError(
                f"the training data hold only 1 class ({self.classes_[0]}); need at least 2"
            )
        n_classes = self.classes_.shape[0]
        n_validation = 0 if validation_data is None else len(validation_data[0])
        spec, _ = self.plan(X.shape[0], n_validation, X.shape[1], n_classes)
        rng = check_random_state(self.random_state)
        seed = int(rng.randint(2**31 - 1))
        validation = None
        if validation_data is not None:
            X_val = validate_data(self, validation_data[0], reset=False)
            y_val = np.asarray(validation_data[1])
            known = np.isin(y_val, self.classes_)
            validation = (X_val[known], np.searchsorted(self.classes_, y_val[known]))
        elif self.early_stopping:
            X, targets, validation = _held_out(X, targets, self.validation_fraction, seed)
        evaluator = self._evaluator(spec, seed=seed)

        generator = np.random.default_rng(seed)
        initial = np.concatenate(
            [
                generator.uniform(-np.pi, np.pi, spec.n_circuit_weights),
                spec.class_readout().initial_head(generator),
            ]
        )
        batch_size = None if self.optimizer in ("cobyla", "lbfgs") else self.batch_size
        if isinstance(self.class_weight, dict):
            # Scikit-learn's dict form: weights by label, 1 for the labels it leaves out.
            self.class_weight_ = np.array(
                [float(self.class_weight.get(label, 1.0)) for label in self.classes_]
            )
        else:
            self.class_weight_ = class_weights(self.class_weight, targets, n_classes)
        objective = Objective(
            evaluator,
            X,
            targets,
            validation,
            batch_size,
            generator,
            class_weights=None if self.class_weight is None else self.class_weight_,
        )
        gradient = self._gradient_method(evaluator.backend)
        if gradient is not None:
            logger.info(
                "%s gradient: %s on the %s engine", self.optimizer, gradient, evaluator.backend
            )
        stopping = (
            EarlyStopping(self.n_iter_no_change, float(self.tol)) if self.early_stopping else None
        )
        result = optimize(
            objective,
            initial,
            optimizer=self.optimizer,
            maxiter=self.maxiter,
            learning_rate=float(self.learning_rate),
            rng=generator,
            callback=self.callback,
            checkpoint=checkpoint,
            gradient=gradient or "parameter_shift",
            schedule=self.learning_rate_schedule,
            early_stopping=stopping,
        )
        # The fitted model keeps its evaluator for predictions, which need no gradient tapes.
        evaluator.release_gradient_buffers()
        self._set_fitted(spec, result.weights, evaluator)
        self.resumed_from_ = result.resumed_from
        self.initial_weights_ = initial
        self._set_history(result.history)
        self.n_iter_ = result.iterations
        self.best_iteration_ = result.best_iteration
        self.best_validation_loss_ = None if stopping is None else stopping.best_loss
        self.stopped_early_ = result.stopped_early
        self.backend_ = evaluator.backend
        self.gradient_ = gradient
        self.circuit_evaluations_ = evaluator.counters.circuit_evaluations
        self.primitive_calls_ = evaluator.counters.primitive_calls
        self.fit_time_ = time.perf_counter() - started
        return self

    def plan(
        self, n_samples: int, n_validation: int, n_features: int, n_classes: int
    ) -> tuple[CircuitSpec, ResourceEstimate]:
        """Check the hyper-parameters and the size guard for a data shape, simulating nothing.

        Args:
            n_samples: Training samples.
            n_validation: Validation samples monitored per iteration.
            n_features: Features (= qubits).
            n_classes: Classes.

        Returns:
            The circuit description and the resource estimate.

        Raises:
            ConfigurationError: For invalid hyper-parameters.
            SizeLimitError: If the job exceeds the size guard.
        """
        self._check_params()
        spec = self._spec(n_features, n_classes)
        if self.early_stopping and n_validation == 0:
            n_validation = _held_out_size(n_samples, n_classes, self.validation_fraction)
            n_samples -= n_validation
        gradient = self._gradient_method(planned_backend(spec, self.shots, self.backend))
        per_step = steps_per_iteration(self.optimizer, spec.n_circuit_weights, gradient or "")
        full_batch = self.optimizer in ("cobyla", "lbfgs")
        batch = n_samples if full_batch else min(n_samples, self.batch_size or n_samples)
        # The numpy engine keeps every sample's encoded state (and, re-uploading a repeated
        # feature map, its phases); both engines hold a working batch; the adjoint gradient adds
        # its tape (each worker thread's block of samples, per layer).
        cached = (
            (n_samples + n_validation) * cached_states_per_sample(spec) if self.shots is None else 0
        )
        tape = 0
        if gradient == "adjoint":
            tape = adjoint_states_held(spec, batch, resolve_threads(self.simulator_threads))
        # The last record (L-BFGS: the initial point, inside its budget of evaluations) and,
        # with early stopping, the restored weights are measured on all samples.
        last = steps_per_iteration(self.optimizer, spec.n_weights, gradient or "") // (
            calls_per_iteration(self.optimizer)
        )
        final = (last if self.optimizer == "lbfgs" else 1) * n_samples + n_validation
        per_iteration = per_step * batch + calls_per_iteration(self.optimizer) * n_validation
        estimate = estimate_resources(
            spec.n_qubits,
            n_states_held=cached + 2 + tape,
            circuit_evaluations=self.maxiter * per_iteration
            + final
            + (n_samples + n_validation if self.early_stopping else 0),
        )
        check_resources(estimate, self.max_memory_bytes, self.max_circuit_evaluations)
        return spec, estimate

    def _gradient_method(self, backend: str) -> str | None:
        """Adam's or L-BFGS's gradient method on ``backend``; ``None`` for the others."""
        if self.optimizer not in GRADIENT_OPTIMIZERS:
            return None
        if self.gradient == "auto":
            return "adjoint" if backend == "numpy" else "parameter_shift"
        if self.gradient == "adjoint" and backend != "numpy":
            raise ConfigurationError(
                f"gradient='adjoint' needs the numpy engine; this circuit runs on {backend}"
            )
        return str(self.gradient)

    def _set_fitted(self, spec: CircuitSpec, weights: np.ndarray, evaluator: CircuitEvaluator):
        self.spec_ = spec
        self.weights_ = np.asarray(weights, dtype=np.float64)
        self._evaluator_ = evaluator

    def _set_history(self, history: list[IterationRecord]) -> None:
        self.loss_curve_ = [r.loss for r in history]
        self.train_accuracy_curve_ = [r.train_accuracy for r in history]
        self.validation_accuracy_curve_ = [
            r.validation_accuracy for r in history if r.validation_accuracy is not None
        ]
        self.validation_loss_curve_ = [
            r.validation_loss for r in history if r.validation_loss is not None
        ]
        self.n_iter_ = max(0, len(history) - 1)

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities, columns ordered as ``classes_``.

        Args:
            X: Encoding angles ``(n_samples, n_qubits)``.

        Returns:
            Array ``(n_samples, n_classes)``; rows sum to one.
        """
        check_is_fitted(self)
        X = validate_data(self, X, reset=False)
        return self._evaluator_.class_probabilities([(X, self.weights_[None, :])])[0][0]

    def predict(self, X: Any) -> np.ndarray:
        """Most probable class of each sample.

        Args:
            X: Encoding angles ``(n_samples, n_qubits)``.

        Returns:
            Labels drawn from ``classes_``.
        """
        probabilities = self.predict_proba(X)
        return np.asarray(self.classes_[probabilities.argmax(axis=1)])

    @property
    def circuit_(self) -> Any:
        """The trained circuit with its weights bound (feature parameters left free).

        The ``"z_softmax"`` readout's head is classical: it is in ``weights_``, not here.
        """
        check_is_fitted(self)
        circuit = self.spec_.circuit()
        weights = [p for p in circuit.parameters if p.name.startswith(WEIGHT_PREFIX)]
        return circuit.assign_parameters({p: self.weights_[p.index] for p in weights})

    # -- plain-data serialisation (no pickle) -------------------------------------------

    def to_state(self) -> dict[str, Any]:
        """Return the fitted model as plain JSON data: circuit description, weights, classes."""
        check_is_fitted(self)
        params = self.get_params()
        params.pop("callback")
        return {
            "format_version": MODEL_FORMAT_VERSION,
            "params": params,
            "spec": self.spec_.to_dict(),
            "classes": self.classes_.tolist(),
            "weights": self.weights_.tolist(),
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> QuantumClassifier:
        """Rebuild a fitted classifier from :meth:`to_state` output, without training.

        Raises:
            ModelFormatError: If the state is malformed or from an unknown format version.
        """
        try:
            if state["format_version"] != MODEL_FORMAT_VERSION:
                raise ModelFormatError(f"unsupported model format {state['format_version']!r}")
            spec = CircuitSpec.from_dict(state["spec"])
            # A model saved before an option existed ran the circuit its description records.
            params = {"readout": spec.readout, "reuploads": spec.reuploads, **state["params"]}
            model = cls(**params)
            weights = np.asarray(state["weights"], dtype=np.float64)
            classes = np.asarray(state["classes"])
        except (KeyError, TypeError, ValueError) as error:
            if isinstance(error, ModelFormatError):
                raise
            raise ModelFormatError(f"malformed model state: {error!r}") from None
        if weights.shape != (spec.n_weights,) or classes.shape[0] != spec.n_classes:
            raise ModelFormatError("model weights or classes do not match its circuit")
        model.classes_ = classes
        model.n_features_in_ = spec.n_qubits
        seed = int(check_random_state(model.random_state).randint(2**31 - 1))
        model._set_fitted(spec, weights, model._evaluator(spec, seed=seed))
        return model

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.non_deterministic = self.shots is not None
        return tags


def _held_out_size(n_samples: int, n_classes: int, fraction: float) -> int:
    """Samples held out for early stopping: ``ceil(fraction * n_samples)``, checked.

    Raises:
        ConfigurationError: Unless both parts can hold every class.
    """
    held_out = int(np.ceil(fraction * n_samples))
    if held_out < n_classes or n_samples - held_out < n_classes:
        raise ConfigurationError(
            f"validation_fraction={fraction} of {n_samples} samples leaves {held_out} for "
            f"validation and {n_samples - held_out} for training; early stopping needs at "
            f"least {n_classes} (one per class) in each: change validation_fraction, or pass "
            "validation data"
        )
    return held_out


def _held_out(
    X: np.ndarray, targets: np.ndarray, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray, np.ndarray]]:
    """A stratified, seeded validation split of the training data for early stopping.

    Returns:
        The training features and targets left, and the held-out ``(features, targets)``.

    Raises:
        ConfigurationError: If a class has too few samples to appear on both sides.
    """
    n_classes = int(targets.max()) + 1
    held_out = _held_out_size(targets.shape[0], n_classes, fraction)
    if np.bincount(targets).min() < 2:
        raise ConfigurationError(
            "early stopping holds out a stratified validation split: every class needs at "
            "least 2 training samples (or pass validation data)"
        )
    X_train, X_val, y_train, y_val = train_test_split(
        X, targets, test_size=held_out, stratify=targets, random_state=seed
    )
    return X_train, y_train, (X_val, y_val)
