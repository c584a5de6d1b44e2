"""MLflow "models from code" definition of the qmlops pyfunc model.

MLflow loads this file as the model: it reads the plain-JSON model document (weights, circuit
description, encoder numbers), verifies its hash and predicts. Nothing is unpickled. Logged by
:func:`tasks.tracking.models.log_model`; MLflow copies the file into each logged model, so
models logged earlier keep loading whatever happens to this copy.
"""

from __future__ import annotations

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel


class QuantumClassifierPyfunc(PythonModel):
    """Predicts labels and class probabilities from raw feature columns."""

    def load_context(self, context):
        """Load and verify the model document."""
        from qmlops.model import DeployedModel

        self.model = DeployedModel.load(context.artifacts["model_document"])

    # A DataFrame hint: MLflow derives no schema from it (the logged signature rules) and does
    # not warn about a missing hint on every log and load.
    def predict(self, context, model_input: pd.DataFrame, params=None):
        """Return a ``prediction`` column and one ``probability_<class>`` column per class."""
        return self.model.predict_frame(pd.DataFrame(model_input))


mlflow.models.set_model(QuantumClassifierPyfunc())
