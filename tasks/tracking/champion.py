"""The ``champion`` alias: read the current champion, gate and move the alias.

The rule is the pure :func:`qmlops.promotion.decide_promotion`; this module only does its I/O.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import RunTag

from qmlops.config import PromotionConfig
from qmlops.errors import ModelFormatError
from qmlops.promotion import CHAMPION_ALIAS, ChampionRecord, PromotionDecision, decide_promotion
from tasks.retry import retrying_task
from tasks.tracking.models import LoggedModel, verify_stored_model
from tasks.tracking.store import TrackedRun


def read_champion(client: MlflowClient, model_name: str, metric: str) -> ChampionRecord | None:
    """The version the ``champion`` alias points at, with its metric and dataset fingerprint."""
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


@retrying_task
def promote_model(
    run: TrackedRun,
    model: LoggedModel,
    evaluations: dict[str, dict[str, Any]],
    fingerprint: str,
    config: PromotionConfig,
) -> PromotionDecision:
    """Gate the ``champion`` alias: the first version takes it, a later one if it beats it.

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
    champion = read_champion(client, model_name, config.metric)
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
            verify_stored_model(run.tracking_uri, model.model_uri)
        except ModelFormatError as error:
            decision = dataclasses.replace(
                decision, promote=False, reason=f"stored model failed verification: {error}"
            )
    if decision.promote:
        client.set_registered_model_alias(model_name, CHAMPION_ALIAS, version)
    client.log_batch(run.run_id, tags=[RunTag(k, v) for k, v in decision.tags().items()])
    return decision
