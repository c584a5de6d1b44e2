"""The deployable model: angle encoder + quantum classifier as one plain-JSON document.

The document holds numbers and a circuit description only (no pickle) and carries a SHA-256
of its canonical content, verified before the model is used.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.pipeline import Pipeline

from qmlops.classifier import QuantumClassifier
from qmlops.errors import DatasetError, ModelFormatError
from qmlops.hashing import canonical_digest
from qmlops.preprocessing import AngleEncoder, preprocessor_to_state

DOCUMENT_KIND = "qmlops.quantum-classifier"
BODY_KEYS = frozenset({"kind", "feature_names", "preprocessor", "classifier"})
MAX_DOCUMENT_BYTES = 64 * 1024 * 1024


def model_document(
    preprocessor: Pipeline, classifier: QuantumClassifier, feature_names: Sequence[str]
) -> dict[str, Any]:
    """Describe a fitted preprocessor + classifier as plain JSON data with a content hash."""
    body = {
        "kind": DOCUMENT_KIND,
        "feature_names": list(feature_names),
        "preprocessor": preprocessor_to_state(preprocessor),
        "classifier": classifier.to_state(),
    }
    return {"body": body, "sha256": canonical_digest(body)}


def verify_model_document(document: Any) -> dict[str, Any]:
    """Check that a model document is intact and of the expected kind, before any use.

    The document must be plain JSON data with exactly the expected sections, and the
    SHA-256 of its canonical body must equal the recorded one, so an artifact altered
    after logging is refused.

    Args:
        document: A parsed model document (output of :func:`model_document`).

    Returns:
        The verified body.

    Raises:
        ModelFormatError: If the document is malformed, of another kind, or was altered.
    """
    if not isinstance(document, dict) or set(document) != {"body", "sha256"}:
        raise ModelFormatError("not a qmlops model document")
    body = document["body"]
    if not isinstance(body, dict):
        raise ModelFormatError("not a qmlops model document")
    try:
        digest = canonical_digest(body)
    except (TypeError, ValueError) as error:
        raise ModelFormatError(f"model document is not plain JSON data: {error}") from None
    if digest != document["sha256"]:
        raise ModelFormatError("model document failed its integrity check (sha256 mismatch)")
    if body.get("kind") != DOCUMENT_KIND:
        raise ModelFormatError(f"unknown model kind {body.get('kind')!r}")
    if set(body) != BODY_KEYS:
        raise ModelFormatError(f"unexpected model document sections {sorted(set(body))}")
    return body


def read_model_document(path: str | Path) -> dict[str, Any]:
    """Read and verify a model document file (a regular JSON file of bounded size).

    Raises:
        ModelFormatError: If the file is missing, too large, not JSON or fails verification.
    """
    path = Path(path)
    try:
        if not path.is_file() or path.stat().st_size > MAX_DOCUMENT_BYTES:
            raise ModelFormatError(f"model file {path} is missing or larger than allowed")
        document = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ModelFormatError(f"cannot read model file {path}: {error}") from None
    verify_model_document(document)
    return dict(document)


class DeployedModel:
    """A deployed model, loaded from its verified document: raw feature rows in, labels out.

    It holds the fitted angle encoder and :class:`~qmlops.classifier.QuantumClassifier` of one
    training and is what the MLflow model and batch scoring serve.

    Args:
        document: Output of :func:`model_document`.

    Raises:
        ModelFormatError: If the document is malformed or its hash does not match.
    """

    def __init__(self, document: dict[str, Any]) -> None:
        body = verify_model_document(document)
        self.feature_names: list[str] = list(body["feature_names"])
        self.encoder = AngleEncoder(body["preprocessor"])
        self.classifier = QuantumClassifier.from_state(body["classifier"])

    @classmethod
    def load(cls, path: str | Path) -> DeployedModel:
        """Read a model document from a JSON file (verified before use)."""
        return cls(read_model_document(path))

    def _angles(self, data: pd.DataFrame | np.ndarray) -> np.ndarray:
        if isinstance(data, pd.DataFrame):
            missing = [name for name in self.feature_names if name not in data.columns]
            if missing:
                raise DatasetError(f"input lacks the model's feature columns {missing}")
            data = data[self.feature_names].to_numpy(dtype=np.float64)
        return self.encoder.transform(np.asarray(data, dtype=np.float64))

    def predict_proba(self, data: pd.DataFrame | np.ndarray) -> np.ndarray:
        """Class probabilities ``(n_samples, n_classes)`` for raw features."""
        return self.classifier.predict_proba(self._angles(data))

    def predict(self, data: pd.DataFrame | np.ndarray) -> np.ndarray:
        """Predicted labels for raw features."""
        return self.classifier.predict(self._angles(data))

    def predict_frame(self, data: pd.DataFrame | np.ndarray) -> pd.DataFrame:
        """Predictions as served: a ``prediction`` column and one ``probability_<class>`` each."""
        probabilities = self.predict_proba(data)
        frame = pd.DataFrame({"prediction": self.classifier.classes_[probabilities.argmax(axis=1)]})
        for index, label in enumerate(self.classes):
            frame[f"probability_{label}"] = probabilities[:, index]
        return frame

    @property
    def classes(self) -> list[str]:
        """Class labels as strings, in probability-column order."""
        return [str(c) for c in self.classifier.classes_]
