"""Typed configuration: the flow parameters, validated at the boundary.

This module is the one source of every setting's default, bound and description: Prefect
renders the models as the Run form, the ``qmlops`` command line generates its options from
them (named by :data:`SHORT_NAMES`), and sweeps name their axes the same way
(:func:`setting_names`). Each model is strict, frozen and forbids unknown fields.

Settings that depend on the data are empty by default and resolved after loading, by the same
functions wherever a run comes from: :func:`resolve_circuit` (qubits from the feature and class
counts, ansatz repetitions from the qubits) and :func:`resolve_model_name` (one registered
model per dataset).

Field names of :class:`CircuitConfig` and :class:`TrainingConfig` equal the
:class:`~qmlops.classifier.QuantumClassifier` parameter names, so the estimator is built from
``**circuit.model_dump(), **training.model_dump()``, less :data:`ORCHESTRATION_FIELDS` (the
training's timeout and checkpoint interval, which steer the task, not the estimator).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    model_validator,
)

DatasetName = Literal["iris", "wine", "breast_cancer", "moons", "circles", "ad_hoc"]
MetricName = Literal["accuracy", "balanced_accuracy", "f1_macro", "roc_auc"]
ModelName = Annotated[
    str, StringConstraints(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
]


def default_ansatz_reps(n_qubits: int) -> int:
    """Ansatz repetitions used when none are given: 2 up to 4 qubits, 3 above.

    Wider circuits need a deeper ansatz before every qubit's measurement depends on every
    feature; measured on breast_cancer at 8 qubits (seed 42, 100 Adam steps) test accuracy rose
    from 0.886 with 2 repetitions to 0.904 with 3, while iris at 4 qubits is best with 2.
    """
    return 2 if n_qubits <= 4 else 3


def default_encoding_scale(n_qubits: int) -> float:
    """Angle range (radians) used when none is given: 2.2 up to 4 qubits, 1.0 above.

    Narrow data need the wide range to draw curved boundaries in few angles (moons at 2 qubits:
    test accuracy 0.995 at 2.2, 0.890 at 1.0); data reduced to 8 qubits fit noise with it
    (synthetic_12f_4c: 0.520 at 2.2, 0.562 at 1.0), means over 5 seeds of the model-quality
    benchmark (``benchmarks/RESULTS.md``, section "Model quality: candidate defaults").
    """
    return 2.2 if n_qubits <= 4 else 1.0


def resolve_encoding(dataset: DatasetConfig, n_qubits: int) -> DatasetConfig:
    """The data settings with an empty ``encoding_scale`` filled in for ``n_qubits`` qubits.

    Args:
        dataset: The configured data settings; an empty ``encoding_scale`` means "from the
            circuit's width" (:func:`default_encoding_scale`).
        n_qubits: The resolved circuit's qubits.

    Returns:
        The settings with ``encoding_scale`` set (the same object when it was set already).
    """
    if dataset.encoding_scale is not None:
        return dataset
    return dataset.model_copy(update={"encoding_scale": default_encoding_scale(n_qubits)})


MAX_ITERATIONS = 10_000
MAX_BATCH_SIZE = 100_000
MAX_SHOTS = 1_000_000
"""Upper bounds shared by :class:`TrainingConfig` and the estimator's own checks."""
MAX_REUPLOADS = 10
"""Most data uploads (:class:`CircuitConfig` and :class:`qmlops.circuits.CircuitSpec`)."""

NARROW_DATA_QUBITS = 4
WIDE_DATA_QUBITS = 8
WIDE_DATA_FEATURES = 16


def default_qubits(n_features: int, n_classes: int) -> int:
    """Qubits used when none are given, from the data's feature and class counts.

    One qubit per feature up to 4; 8 for wide data (more than 16 features, e.g.
    breast_cancer's 30, where PCA to 4 components loses too much); never fewer than the
    readout needs for the classes (``n_classes - 1``) while there are features for them.

    Args:
        n_features: Feature columns of the data.
        n_classes: Distinct labels of the data.

    Returns:
        The qubit count (at most ``n_features``: each qubit encodes one feature).
    """
    wanted = WIDE_DATA_QUBITS if n_features > WIDE_DATA_FEATURES else NARROW_DATA_QUBITS
    return max(1, min(n_features, max(wanted, n_classes - 1)))


class _Config(BaseModel):
    model_config = ConfigDict(strict=True, frozen=True, extra="forbid")


class DatasetConfig(_Config):
    """Which data to train on and how to split and encode it."""

    name: DatasetName = Field("iris", description="Built-in dataset (unused with a data file).")
    path: str | None = Field(
        None, description="CSV or Parquet file with one row per sample (replaces the built-in)."
    )
    target: str | None = Field(
        None, description="Label column of the data file (required with a file)."
    )
    n_samples: int = Field(
        200, ge=20, le=100_000, description="Samples generated for moons, circles and ad_hoc."
    )
    test_size: float = Field(0.2, gt=0.0, lt=0.9, description="Held-out test fraction.")
    validation_size: float = Field(
        0.0, ge=0.0, lt=0.5, description="Fraction of the training split monitored per iteration."
    )
    encoding_scale: float | None = Field(
        None,
        gt=0.0,
        le=6.3,
        description="Features are scaled to [0, encoding_scale] radians. Empty: 2.2 up to 4 "
        "qubits, 1.0 above.",
    )

    @model_validator(mode="after")
    def _path_needs_target(self) -> DatasetConfig:
        if self.path is not None and not self.target:
            raise ValueError("a data file needs its label column (`target`)")
        return self


class CircuitConfig(_Config):
    """The variational circuit: feature map, ansatz and class readout."""

    n_qubits: int | None = Field(
        None,
        ge=1,
        le=24,
        description="Qubits; features are reduced to this many (PCA). Empty: from the data "
        "(one per feature up to 4, 8 above 16 features).",
    )
    feature_map: Literal["z", "zz", "pauli"] = Field("z", description="Data encoding circuit.")
    feature_map_reps: int = Field(1, ge=1, le=10, description="Feature-map repetitions.")
    ansatz: Literal["efficient_su2", "real_amplitudes"] = Field(
        "efficient_su2", description="Trainable circuit."
    )
    ansatz_reps: int | None = Field(
        None,
        ge=1,
        le=20,
        description="Ansatz repetitions; empty: 2 up to 4 qubits, 3 above.",
    )
    entanglement: Literal["reverse_linear", "linear", "full", "circular", "pairwise"] = Field(
        "reverse_linear", description="Entangling pattern."
    )
    reuploads: int = Field(
        2,
        ge=1,
        le=MAX_REUPLOADS,
        description="Data re-uploading: blocks of [feature map, ansatz], each ansatz with its own "
        "weights (1: the feature map once). Re-uploaded pauli maps run on Aer.",
    )
    readout: Literal["hamming_weight", "z_softmax", "zz_softmax"] = Field(
        "z_softmax",
        description="Class readout: hamming_weight (a bitstring votes for its popcount mod "
        "classes), z_softmax (each qubit's Pauli-Z expectation into a trainable softmax "
        "layer) or zz_softmax (as z_softmax, plus neighbouring qubits' Z_q Z_q+1).",
    )

    @property
    def qubits(self) -> int:
        """The qubit count, once known (after :func:`resolve_circuit`).

        Raises:
            ValueError: While ``n_qubits`` is still empty ("from the data").
        """
        if self.n_qubits is None:
            raise ValueError("n_qubits is resolved from the data: call resolve_circuit first")
        return self.n_qubits

    @model_validator(mode="before")
    @classmethod
    def _fill_ansatz_reps(cls, data: Any) -> Any:
        # Resolved at validation so runs record (and caches key on) the number actually used;
        # without qubits it waits for resolve_circuit.
        if isinstance(data, dict) and data.get("ansatz_reps") is None:
            n_qubits = data.get("n_qubits")
            if isinstance(n_qubits, int) and not isinstance(n_qubits, bool):
                return {**data, "ansatz_reps": default_ansatz_reps(n_qubits)}
        return data


def resolve_circuit(circuit: CircuitConfig, n_features: int, n_classes: int) -> CircuitConfig:
    """The circuit with its data-dependent defaults filled in (qubits, then ansatz depth).

    Every entry point (command line, flows, Run form, sweeps, deployments) goes through this
    after loading the data, so the same settings mean the same run everywhere.

    Args:
        circuit: The configured circuit; an empty ``n_qubits`` means "from the data".
        n_features: Feature columns of the loaded data.
        n_classes: Distinct labels of the loaded data.

    Returns:
        A validated configuration with ``n_qubits`` and ``ansatz_reps`` set.
    """
    if circuit.n_qubits is not None and circuit.ansatz_reps is not None:
        return circuit
    n_qubits = (
        default_qubits(n_features, n_classes) if circuit.n_qubits is None else circuit.n_qubits
    )
    return CircuitConfig(**{**circuit.model_dump(), "n_qubits": n_qubits})


class TrainingConfig(_Config):
    """Optimizer and simulator settings."""

    optimizer: Literal["adam", "spsa", "cobyla", "lbfgs"] = Field(
        "adam",
        description="adam and lbfgs use exact gradients (adjoint on the numpy engine, "
        "parameter shift with shots or Aer); lbfgs is full-batch and needs exact simulation.",
    )
    maxiter: int = Field(
        150, ge=1, le=MAX_ITERATIONS, description="Optimizer iterations (COBYLA: evaluations)."
    )
    learning_rate: float = Field(
        0.1, gt=0.0, le=10.0, description="Adam step, SPSA gain, COBYLA trust radius."
    )
    batch_size: int | None = Field(
        48, ge=1, le=MAX_BATCH_SIZE, description="Samples per step (empty: the whole training set)."
    )
    learning_rate_schedule: Literal["cosine", "constant", "exponential"] = Field(
        "cosine",
        description="Adam's step size over the run: cosine or exponential decay to a tenth of "
        "the learning rate, or constant.",
    )
    early_stopping: bool = Field(
        False,
        description="Stop when the validation loss stops improving and keep the best weights "
        "(adam, spsa, lbfgs).",
    )
    validation_fraction: float = Field(
        0.1,
        gt=0.0,
        lt=1.0,
        description="Early stopping without a validation split: training share held out.",
    )
    n_iter_no_change: int = Field(
        10, ge=1, le=MAX_ITERATIONS, description="Early stopping: iterations without improvement."
    )
    tol: float = Field(
        1e-4,
        ge=0.0,
        le=10.0,
        description="Early stopping: validation-loss improvement that counts.",
    )
    class_weight: Literal["balanced"] | None = Field(
        None,
        description="balanced: weigh each class's loss by n_samples / (n_classes * its count) "
        "(empty: equal weights).",
    )
    shots: int | None = Field(
        None, ge=1, le=MAX_SHOTS, description="Measurement shots (empty: exact probabilities)."
    )
    backend: Literal["auto", "numpy", "aer"] = Field("auto", description="Simulation engine.")
    random_state: int = Field(42, ge=0, le=2**31 - 1, description="Seeds split and training.")
    # Orchestration settings, not estimator parameters (see ORCHESTRATION_FIELDS).
    timeout_s: int | None = Field(
        None, ge=1, le=7 * 24 * 3600, description="Fail training after this many seconds."
    )
    checkpoint_every: int = Field(
        10, ge=1, le=100_000, description="Iterations between training checkpoints."
    )


ORCHESTRATION_FIELDS: set[str] = {"timeout_s", "checkpoint_every"}
"""TrainingConfig fields that steer the task around the estimator, not the estimator."""


class TrackingConfig(_Config):
    """Where and under which names results are recorded."""

    experiment: str = Field(
        "qmlops", min_length=1, max_length=200, description="MLflow experiment name."
    )
    model_name: ModelName | None = Field(
        None,
        description="Registered model name (empty: qmlops-{dataset}, one model per dataset).",
    )
    register_model: bool = Field(True, description="Register the model in the MLflow registry.")
    tracking_uri: str | None = Field(
        None, description="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or ./mlruns)."
    )


SWEEP_TRACKING = TrackingConfig(experiment="qmlops-sweeps", register_model=False)
"""A sweep's tracking defaults: its own experiment; only the best model is ever registered."""


class PromotionConfig(_Config):
    """When a newly registered model version takes the ``champion`` alias."""

    metric: MetricName = Field(
        "accuracy", description="Held-out test metric that decides (higher is better)."
    )
    margin: float = Field(
        0.0, ge=0.0, le=1.0, description="Required lead over the current champion's metric."
    )
    require_beat_baseline: bool = Field(
        False,
        description="Also require beating the best classical baseline on the same metric "
        "(off: the comparison is reported, not enforced).",
    )


class ScoringConfig(_Config):
    """Batch scoring: which registered model scores which file."""

    input_path: str | None = Field(
        None,
        min_length=1,
        description="CSV or Parquet file with the model's feature columns, inside the data "
        "root ($QMLOPS_DATA_ROOT, default: the working directory). Empty: a sample of the "
        "built-in dataset the model was trained on.",
    )
    model_name: ModelName = Field("qmlops-iris", description="Registered model name.")
    model_version: int | None = Field(
        None, ge=1, description="Registered version (empty: the `champion` alias)."
    )
    output_path: str | None = Field(
        None, description="Also write the predictions here (.csv or .parquet)."
    )
    experiment: str = Field(
        "qmlops-scoring", min_length=1, max_length=200, description="MLflow experiment name."
    )
    tracking_uri: str | None = Field(
        None, description="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or ./mlruns)."
    )


DeviceName = Annotated[
    str,
    StringConstraints(
        min_length=1,
        max_length=100,
        pattern=r"^(ideal|noise:depolarizing|fake_[a-z0-9_]+|ibm:[a-z][a-z0-9_]*)$",
    ),
]


class DeviceConfig(_Config):
    """Where the trained classifier is evaluated (and optionally trained): see qmlops.devices."""

    device: DeviceName = Field(
        "ideal",
        description="ideal (exact), a fake IBM backend (fake_manila, ...; `qmlops devices` lists "
        "them), noise:depolarizing, or ibm:<backend> (needs $QISKIT_IBM_TOKEN).",
    )
    shots: int | None = Field(
        None,
        ge=1,
        le=1_000_000,
        description="Shots per circuit on the device (required there; on the command "
        "line, --shots with --device sets them).",
    )
    train_on: Literal["ideal", "device"] = Field(
        "ideal", description="Train on the exact path, or under the device's noise with shots."
    )
    optimization_level: int = Field(1, ge=0, le=3, description="Transpiler optimisation level.")
    mitigation: Literal["none", "readout"] = Field(
        "none", description="readout: also report accuracy after mthree readout mitigation."
    )
    max_shots: int | None = Field(
        None, ge=1, description="Refuse runs needing more shots in total (empty: no limit)."
    )
    max_qpu_seconds: float | None = Field(
        None, gt=0.0, description="Refuse hardware runs estimated above this QPU time."
    )
    one_qubit_error: float = Field(
        0.001, ge=0.0, le=0.75, description="noise:depolarizing: one-qubit gate error."
    )
    two_qubit_error: float = Field(
        0.01, ge=0.0, le=0.9375, description="noise:depolarizing: two-qubit gate error."
    )
    readout_error: float = Field(
        0.02, ge=0.0, le=0.5, description="noise:depolarizing: readout bit-flip probability."
    )

    @model_validator(mode="after")
    def _device_training_needs_a_device(self) -> DeviceConfig:
        if self.train_on == "device" and self.device == "ideal":
            raise ValueError("train_on='device' needs a device other than 'ideal'")
        return self


MODEL_NAME_PREFIX = "qmlops-"


def resolve_model_name(model_name: str | None, dataset: DatasetConfig) -> str:
    """The registered model name: the configured one, else ``qmlops-<dataset>``.

    One model per dataset keeps versions trained on different data apart, so a champion is
    only ever compared with versions of its own data.

    Args:
        model_name: The configured name (:attr:`TrackingConfig.model_name`); empty means
            "from the dataset".
        dataset: The dataset: a built-in's name, or the stem of a data file.

    Returns:
        A valid registered model name.
    """
    if model_name is not None:
        return model_name
    stem = Path(dataset.path).stem if dataset.path else dataset.name
    cleaned = re.sub(r"[^A-Za-z0-9_.\-]+", "-", stem).strip("-.") or "data"
    return (MODEL_NAME_PREFIX + cleaned)[:200]


SECTIONS: dict[str, type[BaseModel]] = {
    "dataset": DatasetConfig,
    "circuit": CircuitConfig,
    "training": TrainingConfig,
    "tracking": TrackingConfig,
    "promotion": PromotionConfig,
    "scoring": ScoringConfig,
    "device": DeviceConfig,
}
"""Flow parameter name to its model."""

SHORT_NAMES: dict[str, str] = {
    "dataset.name": "dataset",
    "dataset.path": "data",
    "dataset.n_samples": "samples",
    "circuit.n_qubits": "qubits",
    "circuit.ansatz_reps": "reps",
    "training.random_state": "seed",
    "training.timeout_s": "timeout",
    "device.shots": "device_shots",
    "tracking.register_model": "register",
    "promotion.metric": "promotion_metric",
    "promotion.margin": "promotion_margin",
    "scoring.input_path": "input",
    "scoring.output_path": "output",
    "scoring.model_version": "version",
    "execution.selection_metric": "select_by",
}
"""``section.field`` to the name users type (command line options, sweep axes) where it
differs from the field name; every other setting is named by its field."""

RUN_SECTIONS = ("dataset", "circuit", "training", "device")
"""The sections that define one training run (the settings a sweep can vary)."""


def setting_name(section: str, field: str) -> str:
    """The one name users give a setting (see :data:`SHORT_NAMES`)."""
    return SHORT_NAMES.get(f"{section}.{field}", field)


def setting_names(sections: tuple[str, ...] = RUN_SECTIONS) -> dict[str, tuple[str, str]]:
    """Every setting of the sections by its user-facing name, to ``(section, field)``."""
    return {
        setting_name(section, field): (section, field)
        for section in sections
        for field in SECTIONS[section].model_fields
    }


_SECTION_OF_MODEL = {model.__name__: section for section, model in SECTIONS.items()} | {
    "SweepExecution": "execution"
}


def describe_validation_error(error: ValidationError, as_options: bool = False) -> str:
    """A pydantic validation error on one line, naming each setting as users name it.

    Args:
        error: The error raised by one of this module's models (or ``SweepExecution``).
        as_options: Name settings as command line options (``--learning-rate``).

    Returns:
        ``"name: problem; name: problem"``.
    """
    section = _SECTION_OF_MODEL.get(str(error.title), "")
    parts = []
    for item in error.errors():
        location = [str(part) for part in item["loc"]]
        message = str(item["msg"]).removeprefix("Value error, ")
        if not location:
            parts.append(message)
            continue
        name = setting_name(section, location[0])
        if as_options:
            name = "--" + name.replace("_", "-")
        parts.append(f"{'.'.join([name, *location[1:]])}: {message}")
    return "; ".join(parts)
