"""qmlops core: data, circuits, the quantum classifier, training and metrics.

This package imports neither Prefect nor MLflow, so everything here can be used and tested
on its own; orchestration lives in ``tasks/`` and ``flows/``.
"""

from typing import TYPE_CHECKING, Any

from qmlops.errors import (
    ConfigurationError,
    DatasetError,
    InputError,
    ModelFormatError,
    ModelNotFoundError,
    SchemaMismatchError,
    SimulationError,
    SizeLimitError,
)

__all__ = [
    "ConfigurationError",
    "DatasetError",
    "InputError",
    "ModelFormatError",
    "ModelNotFoundError",
    "QuantumClassifier",
    "SchemaMismatchError",
    "SimulationError",
    "SizeLimitError",
]
__version__ = "0.1.0"

if TYPE_CHECKING:
    from qmlops.classifier import QuantumClassifier


def __getattr__(name: str) -> Any:
    # The classifier pulls in scikit-learn and Qiskit; importing it on first use keeps
    # `qmlops --help`, `qmlops devices` and the configuration models quick to load.
    if name == "QuantumClassifier":
        from qmlops.classifier import QuantumClassifier

        return QuantumClassifier
    raise AttributeError(f"module 'qmlops' has no attribute {name!r}")
