"""Everything MLflow: the one module that talks to the tracking server or store.

The flow opens one MLflow run per flow run and passes its ``run_id`` to every tracking task;
tasks log through :class:`mlflow.MlflowClient` with that id, because MLflow's active run is
per thread and Prefect runs tasks in worker threads.

Default store: a SQLite database under ``./mlruns`` of the working directory, with artifacts
beside it; ``MLFLOW_TRACKING_URI`` or ``TrackingConfig.tracking_uri`` override it. Nothing is
configured at import time.

Reliability: a fresh SQLite store is created under a file lock (one migration, however many
processes start at once); a tracking server that does not answer fails the flow within
seconds (:func:`check_tracking_available`, bounded HTTP retries); metrics carry the run's
start time as timestamp, so a retried logging task rewrites identical rows, which the store
deduplicates; params and tags whose names look like secrets are never logged
(:func:`without_secrets`); a run that cannot be closed because the store is unreachable is
remembered locally and closed by the next flow (:mod:`tasks.hygiene`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import platform
import re
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import qiskit.qpy
from mlflow import MlflowClient
from mlflow.entities import Experiment, Metric, Param, RunTag
from mlflow.models import infer_signature
from prefect import task
from prefect.cache_policies import NO_CACHE

from qmlops import plots
from qmlops.circuits import circuit_summary
from qmlops.classifier import QuantumClassifier
from qmlops.config import PromotionConfig
from qmlops.data import Dataset
from qmlops.errors import ModelFormatError, ModelNotFoundError
from qmlops.model import model_document
from qmlops.promotion import CHAMPION_ALIAS, ChampionRecord, PromotionDecision, decide_promotion
from tasks import faults
from tasks.data import PreparedData
from tasks.policy import RETRIES, RETRY_DELAY_SECONDS, retry_if_transient

DEFAULT_STORE_DIR = "mlruns"
MODEL_CODE = Path(__file__).with_name("mlflow_model_code.py")
CORE_PACKAGE = Path(__file__).resolve().parent.parent / "qmlops"
TRACKED_PACKAGES = (
    "qmlops",
    "qiskit",
    "qiskit-aer",
    "qiskit-machine-learning",
    "scikit-learn",
    "numpy",
    "scipy",
    "pandas",
    "mlflow",
    "prefect",
)
MODEL_REQUIREMENTS = ("qiskit", "qiskit-aer", "scikit-learn", "numpy", "scipy", "pandas", "mlflow")
_METRIC_BATCH = 900  # MLflow's log_batch accepts at most 1000 entries
SECRET_NAME = re.compile(
    r"pass(word|wd|phrase)?|secret|token|api[_.-]?key|credential|auth|private[_.-]?key|"
    r"access[_.-]?key|session[_.-]?key|cookie|signature",
    re.IGNORECASE,
)
# Bounded client retries, so an unreachable server fails a flow in seconds, not minutes
# (MLflow's defaults retry 7 times with exponential backoff and wait 120 s per request).
HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}
AVAILABILITY_TIMEOUT_S = 5.0


class TrackingUnavailableError(RuntimeError):
    """The MLflow tracking server or store cannot be reached (transient: retried)."""


@dataclass(frozen=True)
class TrackedRun:
    """Handle of the MLflow run of one flow run."""

    tracking_uri: str
    experiment_id: str
    run_id: str
    started_ms: int = 0

    def client(self) -> MlflowClient:
        """A client bound to this run's tracking URI."""
        return MlflowClient(tracking_uri=self.tracking_uri)


def default_tracking_uri(base_dir: str | Path | None = None) -> str:
    """SQLite store under ``<base_dir>/mlruns`` (``base_dir``: the working directory)."""
    root = Path(base_dir or Path.cwd()).resolve() / DEFAULT_STORE_DIR
    return f"sqlite:///{root / 'mlflow.db'}"


def resolve_tracking_uri(configured: str | None = None) -> str:
    """Configured URI, else ``$MLFLOW_TRACKING_URI``, else :func:`default_tracking_uri`."""
    return configured or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri()


def _artifact_root(tracking_uri: str) -> str | None:
    if tracking_uri.startswith("sqlite:///"):
        return (Path(tracking_uri.removeprefix("sqlite:///")).parent / "artifacts").as_uri()
    return None


def without_secrets(values: Mapping[str, str]) -> dict[str, str]:
    """Drop entries whose name looks like a secret or whose value is a secret's value.

    Names are matched by :data:`SECRET_NAME` (password, token, api key, ...); values are
    compared with the values of environment variables whose names match it (such as
    ``MLFLOW_TRACKING_PASSWORD``), so a secret copied under an innocent name is dropped too.
    """
    secrets = {
        value for name, value in os.environ.items() if SECRET_NAME.search(name) and len(value) > 3
    }
    return {
        key: value
        for key, value in values.items()
        if not SECRET_NAME.search(key) and not any(secret in value for secret in secrets)
    }


def configure_client() -> None:
    """Bound MLflow's HTTP retries and timeouts, unless the user set them."""
    for name, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(name, value)


def check_tracking_available(tracking_uri: str, timeout_s: float = AVAILABILITY_TIMEOUT_S) -> None:
    """Fail fast with a clear message if a tracking server does not answer its health check.

    Raises:
        TrackingUnavailableError: If an ``http(s)`` server is unreachable or unhealthy.
    """
    if not tracking_uri.startswith(("http://", "https://")):
        return
    url = tracking_uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            if response.status == 200:
                return
            problem = f"HTTP {response.status}"
    except (urllib.error.URLError, OSError) as error:
        problem = str(getattr(error, "reason", error))
    raise TrackingUnavailableError(
        f"MLflow tracking server {_public(tracking_uri)} is unavailable ({problem}); start it "
        "or point MLFLOW_TRACKING_URI / --tracking-uri at a reachable store"
    )


def _public(uri: str) -> str:
    # Never echo credentials embedded in a URI.
    return re.sub(r"//[^/@]*@", "//***@", uri)


@contextlib.contextmanager
def _store_lock(tracking_uri: str) -> Iterator[None]:
    """Exclusive file lock beside a SQLite store (nothing for other stores)."""
    if not tracking_uri.startswith("sqlite:///"):
        yield
        return
    database = Path(tracking_uri.removeprefix("sqlite:///"))
    database.parent.mkdir(parents=True, exist_ok=True)
    with open(database.with_name(database.name + ".lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def prepare_store(tracking_uri: str, experiment: str) -> str:
    """Create the store (schema migration runs once, here) and the experiment.

    Processes that start at once on a fresh SQLite store queue on a file lock, so exactly
    one of them creates the schema and the experiment.

    Returns:
        The experiment id.
    """
    configure_client()
    check_tracking_available(tracking_uri)
    with _store_lock(tracking_uri):
        return _experiment_id(tracking_uri, experiment)


EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING_KIND = "custom_model_development"


def mark_model_training(client: MlflowClient, experiment: Experiment) -> None:
    """Tag an experiment as model training unless it has a kind already.

    MLflow 3's UI reads the kind to choose its view: without it, it opens experiments in its
    GenAI (traces) view, and the runs, charts and registered models hide behind a toggle.
    """
    if EXPERIMENT_KIND_TAG not in experiment.tags:
        client.set_experiment_tag(
            experiment.experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING_KIND
        )


def _experiment_id(tracking_uri: str, experiment: str) -> str:
    client = MlflowClient(tracking_uri=tracking_uri)
    existing = client.get_experiment_by_name(experiment)
    if existing is not None:
        mark_model_training(client, existing)
        return str(existing.experiment_id)
    artifact_root = _artifact_root(tracking_uri)
    location = None if artifact_root is None else f"{artifact_root}/{experiment}"
    try:
        return str(
            client.create_experiment(
                experiment,
                artifact_location=location,
                tags={EXPERIMENT_KIND_TAG: MODEL_TRAINING_KIND},
            )
        )
    except mlflow.exceptions.MlflowException:
        # Another process created it first.
        found = client.get_experiment_by_name(experiment)
        if found is None:
            raise
        return str(found.experiment_id)


def package_versions() -> dict[str, str]:
    """Installed versions of the packages that determine a result."""
    versions = {"python": platform.python_version()}
    for package in TRACKED_PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not-installed"
    return versions


def _flatten(prefix: str, values: dict[str, Any]) -> dict[str, str]:
    return {f"{prefix}.{key}": "" if value is None else str(value) for key, value in values.items()}


def flow_run_tags(flow_name: str, **extra: str) -> dict[str, str]:
    """Tags that tie an MLflow run to the Prefect flow run that opens it.

    Args:
        flow_name: The flow's name.
        **extra: More tags to set with them.

    Returns:
        ``prefect.flow_run_id``, ``prefect.flow_run_name``, ``prefect.flow_name`` and ``extra``.
    """
    from prefect.runtime import flow_run

    return {
        "prefect.flow_run_id": str(flow_run.id or ""),
        "prefect.flow_run_name": str(flow_run.name or ""),
        "prefect.flow_name": flow_name,
        **extra,
    }


@task(
    name="start-tracking-run",
    retries=RETRIES,
    retry_delay_seconds=RETRY_DELAY_SECONDS,
    retry_condition_fn=retry_if_transient,
    cache_policy=NO_CACHE,
)
def start_tracking_run(
    tracking_uri: str | None, experiment: str, run_name: str, tags: dict[str, str]
) -> TrackedRun:
    """Open the MLflow run of this flow run, tagged with the process that owns it.

    The owner tags (:func:`tasks.hygiene.owner_tags`) let a later flow tell a run whose
    process died (``kill -9``) from one that is still going.
    """
    uri = resolve_tracking_uri(tracking_uri)
    return _open_run(uri, prepare_store(uri, experiment), run_name, tags)


@task(
    name="start-child-run",
    retries=RETRIES,
    retry_delay_seconds=RETRY_DELAY_SECONDS,
    retry_condition_fn=retry_if_transient,
    cache_policy=NO_CACHE,
)
def start_child_run(parent: TrackedRun, run_name: str, tags: dict[str, str]) -> TrackedRun:
    """Open an MLflow run nested under ``parent``, in the parent's experiment.

    The parent's flow prepared the store and the experiment, so this skips
    :func:`prepare_store` and its file lock: Ray workers starting at once would otherwise
    open the store one after another.
    """
    configure_client()
    check_tracking_available(parent.tracking_uri)
    nested = {**tags, "mlflow.parentRunId": parent.run_id}
    return _open_run(parent.tracking_uri, parent.experiment_id, run_name, nested)


def _open_run(
    tracking_uri: str, experiment_id: str, run_name: str, tags: dict[str, str]
) -> TrackedRun:
    from tasks.hygiene import owner_tags

    faults.checkpoint("start-tracking")
    run = MlflowClient(tracking_uri=tracking_uri).create_run(
        experiment_id, run_name=run_name, tags=without_secrets({**tags, **owner_tags()})
    )
    return TrackedRun(
        tracking_uri=tracking_uri,
        experiment_id=experiment_id,
        run_id=run.info.run_id,
        started_ms=int(run.info.start_time),
    )


def close_run(run: TrackedRun, status: str, error: str | None = None) -> None:
    """Mark the MLflow run FINISHED, FAILED or KILLED (with the error, if any).

    A plain function as well as a task: a flow that is being terminated by a signal closes
    its run with it directly, without scheduling a task.
    """
    client = run.client()
    if error:
        client.set_tag(run.run_id, "error", error[:4000])
    client.set_terminated(run.run_id, status=status)


@task(name="end-tracking-run", retries=RETRIES, cache_policy=NO_CACHE)
def end_tracking_run(run: TrackedRun, status: str, error: str | None = None) -> None:
    """Close the MLflow run as FINISHED, FAILED or KILLED (with the error, if any)."""
    close_run(run, status, error)


@task(
    name="set-run-tags",
    retries=RETRIES,
    retry_delay_seconds=RETRY_DELAY_SECONDS,
    retry_condition_fn=retry_if_transient,
    cache_policy=NO_CACHE,
)
def set_run_tags(run: TrackedRun, tags: dict[str, str]) -> None:
    """Tag the run (names or values that look like secrets are dropped)."""
    client = run.client()
    for key, value in without_secrets(tags).items():
        client.set_tag(run.run_id, key, value)


def running_runs(tracking_uri: str, experiment: str) -> list[tuple[str, dict[str, str]]]:
    """``(run_id, tags)`` of the experiment's runs that are still RUNNING."""
    client = MlflowClient(tracking_uri=tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return []
    runs = client.search_runs(
        [found.experiment_id], filter_string="attributes.status = 'RUNNING'", max_results=1000
    )
    return [(r.info.run_id, dict(r.data.tags)) for r in runs]


def mark_terminated(tracking_uri: str, run_id: str, status: str, reason: str) -> bool:
    """Close a run left RUNNING by a dead flow; ``False`` if it was closed meanwhile."""
    client = MlflowClient(tracking_uri=tracking_uri)
    if client.get_run(run_id).info.status != "RUNNING":
        return False
    client.set_tag(run_id, "qmlops.closed_by", reason[:4000])
    client.set_terminated(run_id, status=status)
    return True


def _config_params(configs: dict[str, dict[str, Any]], extra: dict[str, str]) -> list[Param]:
    """Flattened configuration sections, ``extra`` and package versions, secrets dropped."""
    params: dict[str, str] = {}
    for section, values in configs.items():
        params.update(_flatten(section, values))
    params.update(extra)
    params.update(_flatten("version", package_versions()))
    return [Param(key, value[:6000]) for key, value in without_secrets(params).items()]


@task(
    name="log-run-inputs",
    retries=RETRIES,
    retry_delay_seconds=RETRY_DELAY_SECONDS,
    retry_condition_fn=retry_if_transient,
    cache_policy=NO_CACHE,
)
def log_run_inputs(run: TrackedRun, configs: dict[str, dict[str, Any]], dataset: Dataset) -> None:
    """Log the whole configuration, the dataset identity, seeds and package versions."""
    params = _config_params(
        configs,
        {
            "dataset.fingerprint": dataset.fingerprint,
            "dataset.source": dataset.source,
            "dataset.n_samples": str(dataset.features.shape[0]),
            "dataset.n_features": str(dataset.features.shape[1]),
            "dataset.n_classes": str(dataset.n_classes),
        },
    )
    run.client().log_batch(
        run.run_id,
        params=params,
        tags=[
            RunTag("dataset.fingerprint", dataset.fingerprint),
            RunTag("dataset.name", dataset.name),
        ],
    )


def _log_metrics(run: TrackedRun, metrics: list[Metric]) -> None:
    client = run.client()
    for start in range(0, len(metrics), _METRIC_BATCH):
        client.log_batch(run.run_id, metrics=metrics[start : start + _METRIC_BATCH])
        faults.checkpoint("log-metrics")


def _timestamp(run: TrackedRun) -> int:
    # The run's start time, not "now": a retried task then logs rows identical to the ones
    # an interrupted attempt already wrote, and the store keeps each (key, step) once.
    return run.started_ms or int(time.time() * 1000)


def _log_png(client: MlflowClient, run_id: str, image: bytes, name: str) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / name
        path.write_bytes(image)
        client.log_artifact(run_id, str(path), artifact_path="plots")


@task(
    name="log-training",
    retries=RETRIES,
    retry_delay_seconds=RETRY_DELAY_SECONDS,
    retry_condition_fn=retry_if_transient,
    cache_policy=NO_CACHE,
)
def log_training(run: TrackedRun, classifier: QuantumClassifier) -> None:
    """Log per-iteration curves (with ``step``), training cost, circuit size and the circuit."""
    now = _timestamp(run)
    curves = {
        "train_loss": classifier.loss_curve_,
        "train_accuracy": classifier.train_accuracy_curve_,
        "validation_accuracy": classifier.validation_accuracy_curve_,
    }
    metrics = [
        Metric(key, float(value), now, step)
        for key, values in curves.items()
        for step, value in enumerate(values)
    ]
    summary = {
        "training_time_s": classifier.fit_time_,
        "circuit_evaluations": classifier.circuit_evaluations_,
        "primitive_calls": classifier.primitive_calls_,
        "iterations": classifier.n_iter_,
        **circuit_summary(classifier.spec_),
    }
    metrics += [Metric(key, float(value), now, 0) for key, value in summary.items()]
    _log_metrics(run, metrics)
    client = run.client()
    client.set_tag(run.run_id, "simulation_backend", classifier.backend_)
    curves_figure = plots.training_curves_figure(
        classifier.loss_curve_,
        classifier.train_accuracy_curve_,
        classifier.validation_accuracy_curve_,
    )
    _log_png(client, run.run_id, plots.png(curves_figure), "training_curves.png")
    _log_png(client, run.run_id, plots.circuit_png(classifier.spec_), "circuit.png")
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "circuit.qpy"
        with path.open("wb") as handle:
            qiskit.qpy.dump(classifier.circuit_, handle)
        client.log_artifact(run.run_id, str(path), artifact_path="circuit")
        spec_path = Path(folder) / "circuit_spec.json"
        spec_path.write_text(json.dumps(classifier.spec_.to_dict(), indent=2))
        client.log_artifact(run.run_id, str(spec_path), artifact_path="circuit")


@task(
    name="log-evaluation",
    retries=RETRIES,
    retry_delay_seconds=RETRY_DELAY_SECONDS,
    retry_condition_fn=retry_if_transient,
    cache_policy=NO_CACHE,
)
def log_evaluation(run: TrackedRun, evaluations: dict[str, dict[str, Any]]) -> None:
    """Log every model's test metrics, the quantum confusion matrix and an evaluation JSON.

    Metric names: ``test_*`` for the quantum model, ``<baseline>_test_*`` for the baselines.
    """
    now = _timestamp(run)
    metrics = []
    for model_name, evaluation in evaluations.items():
        prefix = "" if model_name == "quantum" else f"{model_name}_"
        for key, value in evaluation["metrics"].items():
            if np.isfinite(value):
                metrics.append(Metric(f"{prefix}test_{key}", float(value), now, 0))
    _log_metrics(run, metrics)
    client = run.client()
    quantum = evaluations["quantum"]
    matrix_figure = plots.confusion_matrix_figure(quantum["confusion_matrix"], quantum["labels"])
    _log_png(client, run.run_id, plots.png(matrix_figure), "confusion_matrix.png")
    report = {
        name: {key: value for key, value in evaluation.items() if key != "predictions"}
        for name, evaluation in evaluations.items()
    }
    client.log_text(run.run_id, json.dumps(report, indent=2, default=float), "evaluation.json")


@dataclass(frozen=True)
class LoggedModel:
    """Where the model went."""

    model_uri: str
    registered_name: str | None
    registered_version: str | None


@task(
    name="log-model",
    retries=RETRIES,
    retry_delay_seconds=RETRY_DELAY_SECONDS,
    retry_condition_fn=retry_if_transient,
    cache_policy=NO_CACHE,
)
def log_model(
    run: TrackedRun,
    classifier: QuantumClassifier,
    prepared: PreparedData,
    feature_names: list[str],
    model_name: str,
    register: bool,
) -> LoggedModel:
    """Log the model as an MLflow pyfunc (models from code, plain JSON weights) and register it.

    The input example is a few raw training rows; the signature comes from the model's own
    output on them.
    """
    document = model_document(prepared.preprocessor, classifier, feature_names)
    example = pd.DataFrame(prepared.raw.X_train[:5], columns=feature_names)
    client = run.client()
    with tempfile.TemporaryDirectory() as folder:
        document_path = Path(folder) / "model.json"
        document_path.write_text(json.dumps(document))
        from qmlops.model import QuantumModel

        loaded = QuantumModel(document)
        output = loaded.predict_frame(example)
        mlflow.set_tracking_uri(run.tracking_uri)
        logged = mlflow.initialize_logged_model(
            name="quantum_classifier",
            source_run_id=run.run_id,
            experiment_id=run.experiment_id,
            model_type="qmlops.quantum-classifier",
            tags={
                "dataset.fingerprint": client.get_run(run.run_id).data.tags.get(
                    "dataset.fingerprint", ""
                )
            },
        )
        info = mlflow.pyfunc.log_model(
            name="quantum_classifier",
            python_model=str(MODEL_CODE),
            artifacts={"model_document": str(document_path)},
            code_paths=[str(CORE_PACKAGE)],
            signature=infer_signature(example, output),
            input_example=example,
            pip_requirements=[
                f"{package}=={metadata.version(package)}" for package in MODEL_REQUIREMENTS
            ],
            model_id=logged.model_id,
        )
    from mlflow.entities import LoggedModelOutput

    client.log_outputs(run.run_id, models=[LoggedModelOutput(info.model_id, step=0)])
    client.log_text(run.run_id, json.dumps(document, indent=2), "model/model.json")
    model_uri = f"models:/{info.model_id}"
    if not register:
        return LoggedModel(model_uri, None, None)
    version = mlflow.register_model(model_uri, model_name)
    client.set_tag(run.run_id, "registered_model", f"{model_name}/{version.version}")
    return LoggedModel(model_uri, model_name, str(version.version))


def _verify_stored_model(tracking_uri: str, model_uri: str) -> None:
    """Read the model document back from the store and check its hash before it is trusted.

    Raises:
        ModelFormatError: When the stored document is missing, malformed or was altered.
    """
    from qmlops.model import read_model_document

    mlflow.set_tracking_uri(tracking_uri)
    with tempfile.TemporaryDirectory() as folder:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=folder))
        documents = sorted(local.glob("artifacts/*.json"))
        if len(documents) != 1:
            raise ModelFormatError(f"{model_uri} holds no single model document")
        read_model_document(documents[0])


def _read_champion(client: MlflowClient, model_name: str, metric: str) -> ChampionRecord | None:
    version_number = client.get_registered_model(model_name).aliases.get(CHAMPION_ALIAS)
    if version_number is None:
        return None
    version = client.get_model_version(model_name, str(version_number))
    tags = dict(version.tags)
    value: str | float | None = tags.get(f"test_{metric}")
    fingerprint = tags.get("dataset.fingerprint")
    if (value is None or fingerprint is None) and version.run_id:
        # Versions registered before the gate existed carry their figures on the run only.
        run = client.get_run(version.run_id)
        value = run.data.metrics.get(f"test_{metric}", value)
        fingerprint = run.data.tags.get("dataset.fingerprint", fingerprint)
    return ChampionRecord(
        version=str(version.version),
        metric=None if value is None else float(value),
        fingerprint=fingerprint or "",
    )


@task(
    name="promote-model",
    retries=RETRIES,
    retry_delay_seconds=RETRY_DELAY_SECONDS,
    retry_condition_fn=retry_if_transient,
    cache_policy=NO_CACHE,
)
def promote_model(
    run: TrackedRun,
    model: LoggedModel,
    evaluations: dict[str, dict[str, Any]],
    fingerprint: str,
    config: PromotionConfig,
) -> PromotionDecision:
    """Gate the ``champion`` alias: move it to the new version only if the version beats it.

    The new version is tagged with its held-out metrics and dataset fingerprint (what a later
    gate compares against); the decision and the compared figures become ``promotion.*`` tags
    of the run. See :func:`qmlops.promotion.decide_promotion` for the rule.

    Returns:
        The decision.
    """
    if model.registered_name is None or model.registered_version is None:
        raise ValueError("only a registered model version can be promoted")
    client = run.client()
    model_name, version = model.registered_name, model.registered_version
    quantum = evaluations["quantum"]["metrics"]
    champion = _read_champion(client, model_name, config.metric)
    for key, value in {
        **{f"test_{metric}": str(value) for metric, value in quantum.items()},
        "dataset.fingerprint": fingerprint,
    }.items():
        client.set_model_version_tag(model_name, version, key, value)
    if champion is not None and champion.version == version:
        # A retry after the alias moved: the decision was already taken and applied.
        champion = None
    decision = decide_promotion(
        quantum,
        {name: e["metrics"] for name, e in evaluations.items() if name != "quantum"},
        champion,
        fingerprint,
        config,
    )
    if decision.promote:
        try:
            _verify_stored_model(run.tracking_uri, model.model_uri)
        except ModelFormatError as error:
            decision = dataclasses.replace(
                decision, promote=False, reason=f"stored model failed verification: {error}"
            )
    if decision.promote:
        client.set_registered_model_alias(model_name, CHAMPION_ALIAS, version)
    client.log_batch(run.run_id, tags=[RunTag(k, v) for k, v in decision.tags().items()])
    return decision


@dataclass(frozen=True)
class RegisteredModel:
    """A registered model version loaded for scoring."""

    name: str
    version: str
    uri: str
    input_columns: list[str]
    pyfunc: Any


@task(
    name="load-registered-model",
    retries=RETRIES,
    retry_delay_seconds=RETRY_DELAY_SECONDS,
    retry_condition_fn=retry_if_transient,
    cache_policy=NO_CACHE,
)
def load_registered_model(
    tracking_uri: str | None, model_name: str, version: int | None = None
) -> RegisteredModel:
    """Load ``models:/<name>/<version>``, or the version the ``champion`` alias points at.

    Raises:
        ModelNotFoundError: When the model, the version or the alias does not exist.
    """
    uri = resolve_tracking_uri(tracking_uri)
    client = MlflowClient(tracking_uri=uri)
    try:
        if version is None:
            aliases = client.get_registered_model(model_name).aliases
            if CHAMPION_ALIAS not in aliases:
                raise ModelNotFoundError(
                    f"registered model {model_name!r} has no {CHAMPION_ALIAS!r} alias yet"
                )
            resolved = str(aliases[CHAMPION_ALIAS])
        else:
            resolved = str(client.get_model_version(model_name, str(version)).version)
    except mlflow.exceptions.MlflowException as error:
        if error.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        which = model_name if version is None else f"{model_name} version {version}"
        raise ModelNotFoundError(f"no registered model {which} in {uri}") from None
    model_uri = f"models:/{model_name}/{resolved}"
    mlflow.set_tracking_uri(uri)
    pyfunc = mlflow.pyfunc.load_model(model_uri)
    schema = pyfunc.metadata.get_input_schema()
    if schema is None:
        raise ModelNotFoundError(f"{model_uri} has no input signature to check input against")
    return RegisteredModel(
        name=model_name,
        version=resolved,
        uri=model_uri,
        input_columns=[str(c) for c in schema.input_names()],
        pyfunc=pyfunc,
    )


def training_run_params(tracking_uri: str | None, model_name: str, version: str) -> dict[str, str]:
    """The parameters of the run that produced a registered model version."""
    client = MlflowClient(tracking_uri=resolve_tracking_uri(tracking_uri))
    run_id = client.get_model_version(model_name, version).run_id
    return {} if not run_id else dict(client.get_run(run_id).data.params)


@task(
    name="log-predictions",
    retries=RETRIES,
    retry_delay_seconds=RETRY_DELAY_SECONDS,
    retry_condition_fn=retry_if_transient,
    cache_policy=NO_CACHE,
)
def log_predictions(
    run: TrackedRun, params: dict[str, str], predictions: pd.DataFrame, file_name: str
) -> str:
    """Record a scoring run: its parameters, the row count and the predictions file.

    Returns:
        The artifact path of the predictions inside the run.
    """
    client = run.client()
    client.log_batch(
        run.run_id,
        params=[Param(key, value[:6000]) for key, value in params.items()],
        metrics=[Metric("n_rows", float(len(predictions)), int(time.time() * 1000), 0)],
    )
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / file_name
        predictions.to_csv(path, index=False)
        client.log_artifact(run.run_id, str(path), artifact_path="predictions")
    return f"predictions/{file_name}"


# -- sweeps: the parent run of a sweep ---------------------------------------------------


@task(
    name="log-sweep-inputs",
    retries=RETRIES,
    retry_delay_seconds=RETRY_DELAY_SECONDS,
    retry_condition_fn=retry_if_transient,
    cache_policy=NO_CACHE,
)
def log_sweep_inputs(run: TrackedRun, configs: dict[str, dict[str, Any]], space: str) -> None:
    """Log a sweep's settings and package versions as params, its search space as JSON."""
    run.client().log_batch(run.run_id, params=_config_params(configs, {}))
    run.client().log_text(run.run_id, space, "sweep/search_space.json")


@task(
    name="log-sweep-comparison",
    retries=RETRIES,
    retry_delay_seconds=RETRY_DELAY_SECONDS,
    retry_condition_fn=retry_if_transient,
    cache_policy=NO_CACHE,
)
def log_sweep_comparison(
    run: TrackedRun,
    rows: list[dict[str, Any]],
    outcomes: list[dict[str, Any]],
    best: dict[str, Any] | None,
    metric: str,
    rule: str,
    baseline_metrics: dict[str, dict[str, float]],
) -> None:
    """Log the comparison table (CSV and JSON), the figures, the best configuration, baselines.

    Baseline metrics are logged as ``<baseline>_test_<metric>`` (prefixed with the data key
    when the sweep covers several datasets or qubit counts).
    """
    from qmlops import sweep_report

    client = run.client()
    with tempfile.TemporaryDirectory() as folder:
        table = Path(folder) / "comparison.csv"
        pd.DataFrame(rows).to_csv(table, index=False)
        client.log_artifact(run.run_id, str(table), artifact_path="sweep")
    client.log_text(
        run.run_id,
        json.dumps({"metric": metric, "rule": rule, "best": best, "rows": rows}, indent=2),
        "sweep/comparison.json",
    )
    figures = {
        "accuracy_vs_parameters.png": sweep_report.accuracy_vs_parameters_figure(rows, metric),
        "accuracy_vs_time.png": sweep_report.accuracy_vs_time_figure(rows, metric),
        "loss_curves.png": sweep_report.loss_curves_figure(outcomes),
    }
    for name, figure in figures.items():
        # Point labels may reach past the axes: crop to everything drawn.
        _log_png(client, run.run_id, plots.png(figure, tight=True), name)
    now = int(time.time() * 1000)
    metrics = [
        Metric("configurations_completed", float(sum(r["status"] == "completed" for r in rows)),
               now, 0),
        Metric("configurations_failed", float(sum(r["status"] == "failed" for r in rows)), now, 0),
    ]  # fmt: skip
    several = len(baseline_metrics) > 1
    for data_key, by_baseline in baseline_metrics.items():
        prefix = f"{data_key}." if several else ""
        metrics += [
            Metric(f"{prefix}{name}", float(value), now, 0)
            for name, value in by_baseline.items()
            if np.isfinite(value)
        ]
    tags = [RunTag("sweep.selection_metric", metric), RunTag("sweep.selection_rule", rule)]
    if best is not None:
        metrics.append(Metric(f"best_{metric}", float(best[metric]), now, 0))
        tags += [
            RunTag("sweep.best_configuration", str(best["configuration"])),
            RunTag("sweep.best_run_id", str(best["mlflow_run_id"])),
        ]
    client.log_batch(run.run_id, metrics=metrics, tags=tags)


@task(
    name="register-best-model",
    retries=RETRIES,
    retry_delay_seconds=RETRY_DELAY_SECONDS,
    retry_condition_fn=retry_if_transient,
    cache_policy=NO_CACHE,
)
def register_run_model(run: TrackedRun, child_run_id: str, model_name: str) -> LoggedModel:
    """Register the model a (child) run logged, and tag the parent run with the version."""
    client = run.client()
    outputs = client.get_run(child_run_id).outputs
    model_ids = [output.model_id for output in (outputs.model_outputs if outputs else [])]
    if not model_ids:
        raise LookupError(f"run {child_run_id} logged no model")
    mlflow.set_tracking_uri(run.tracking_uri)
    model_uri = f"models:/{model_ids[0]}"
    version = mlflow.register_model(model_uri, model_name)
    client.set_tag(run.run_id, "registered_model", f"{model_name}/{version.version}")
    client.set_tag(child_run_id, "registered_model", f"{model_name}/{version.version}")
    return LoggedModel(model_uri, model_name, str(version.version))
