"""Logging, registering and verifying models.

A model is logged as an MLflow pyfunc "model from code" (:mod:`tasks.tracking.pyfunc_model`)
whose only artifact is the plain-JSON model document: nothing is pickled.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import mlflow
import pandas as pd
from mlflow.entities import LoggedModelOutput
from mlflow.models import infer_signature

from qmlops.classifier import QuantumClassifier
from qmlops.errors import ModelFormatError
from qmlops.model import DeployedModel, model_document, read_model_document
from tasks.data import PreparedData
from tasks.retry import retrying_task
from tasks.tracking.store import TrackedRun

MODEL_CODE = Path(__file__).with_name("pyfunc_model.py")
CORE_PACKAGE = Path(__file__).resolve().parents[2] / "qmlops"
MODEL_REQUIREMENTS = ("qiskit", "qiskit-aer", "scikit-learn", "numpy", "scipy", "pandas", "mlflow")


@dataclass(frozen=True)
class LoggedModel:
    """Where the model went."""

    model_uri: str
    registered_name: str | None
    registered_version: str | None


@retrying_task
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
        output = DeployedModel(document).predict_frame(example)
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
    client.log_outputs(run.run_id, models=[LoggedModelOutput(info.model_id, step=0)])
    client.log_text(run.run_id, json.dumps(document, indent=2), "model/model.json")
    model_uri = f"models:/{info.model_id}"
    if not register:
        return LoggedModel(model_uri, None, None)
    version = mlflow.register_model(model_uri, model_name)
    client.set_tag(run.run_id, "registered_model", f"{model_name}/{version.version}")
    return LoggedModel(model_uri, model_name, str(version.version))


def verify_stored_model(tracking_uri: str, model_uri: str) -> None:
    """Read the model document back from the store and check its hash before it is trusted.

    Raises:
        ModelFormatError: When the stored document is missing, malformed or was altered.
    """
    mlflow.set_tracking_uri(tracking_uri)
    with tempfile.TemporaryDirectory() as folder:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=folder))
        documents = sorted(local.glob("artifacts/*.json"))
        if len(documents) != 1:
            raise ModelFormatError(f"{model_uri} holds no single model document")
        read_model_document(documents[0])


@retrying_task
def register_best_model(run: TrackedRun, child_run_id: str, model_name: str) -> LoggedModel:
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
