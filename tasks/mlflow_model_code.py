"""MLflow "models from code" definition of the qmlops pyfunc model.

MLflow loads this file as the model: it reads the plain-JSON model document (weights, circuit
description, encoder numbers), verifies its hash and predicts. Nothing is unpickled. Logged by
:mod:`tasks.tracking`, which owns every other use of MLflow.
"""

from __future__ import annotations

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel


class QuantumClassifierModel(PythonModel):
    """Predicts labels and class probabilities from raw feature columns."""

    def load_context(self, context):
        """Load and verify the model document."""
        from qmlops.model import QuantumModel

        self.model = QuantumModel.load(context.artifacts["model_document"])

    # No type hints: MLflow would derive a (wrong) schema from them; the logged signature rules.
    def predict(self, context, model_input, params=None):
        """Return a ``prediction`` column and one ``probability_<class>`` column per class."""
        return self.model.predict_frame(pd.DataFrame(model_input))


mlflow.models.set_model(QuantumClassifierModel())
