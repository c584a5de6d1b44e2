"""qmlops core: data, circuits, the quantum classifier, training and metrics.

This package imports neither Prefect nor MLflow, so everything here can be used and tested
on its own; orchestration lives in ``tasks/`` and ``flows/``.
"""

from qmlops.classifier import QuantumClassifier
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
