"""Loading a registered model version for scoring (the champion by default)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import mlflow
from mlflow import MlflowClient

from qmlops.errors import ModelNotFoundError
from qmlops.promotion import CHAMPION_ALIAS
from tasks.retry import retrying_task
from tasks.tracking.store import resolve_tracking_uri


@dataclass(frozen=True)
class RegisteredModel:
    """A registered model version loaded for scoring."""

    name: str
    version: str
    uri: str
    input_columns: list[str]
    pyfunc: Any


@retrying_task
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
