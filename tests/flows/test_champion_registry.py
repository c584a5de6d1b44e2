"""The champion alias in a real registry: it moves to a better new version, and only then.

Real Prefect engine, real MLflow SQLite store in ``tmp_path``, real trainings: a one-step
model becomes the first champion, a longer training of the same data is better, and the
margin decides whether its new version takes the alias. The margins are set from the two
measured accuracies, a hair above and a hair below their difference, so the test does not
depend on what the accuracies happen to be.
"""

from __future__ import annotations

import pytest
from mlflow import MlflowClient

from flows.train import train
from qmlops.config import (
    CircuitConfig,
    DatasetConfig,
    PromotionConfig,
    TrackingConfig,
    TrainingConfig,
)

pytestmark = [pytest.mark.usefixtures("prefect_harness"), pytest.mark.slow]

MODEL = "registry-test"
HAIR = 1e-9


def _train(maxiter: int, margin: float = 0.0, register: bool = True) -> dict:
    return train(
        dataset=DatasetConfig(name="moons", n_samples=60),
        circuit=CircuitConfig(n_qubits=2, ansatz_reps=1),
        training=TrainingConfig(
            maxiter=maxiter, learning_rate=0.2, batch_size=None, random_state=7
        ),
        tracking=TrackingConfig(model_name=MODEL, register_model=register),
        promotion=PromotionConfig(margin=margin, require_beat_baseline=False),
    )


def _champion(client: MlflowClient) -> str | None:
    aliases = client.get_registered_model(MODEL).aliases
    return None if "champion" not in aliases else str(aliases["champion"])


def test_champion_moves_to_a_better_version_only_when_it_clears_the_margin(
    mlflow_uri: str,
) -> None:
    client = MlflowClient(mlflow_uri)
    # Given a weak first model, which becomes the champion (there is none yet)
    weak = _train(maxiter=1)
    assert weak["registered_version"] == "1"
    assert _champion(client) == "1"
    weak_accuracy = weak["metrics"]["quantum"]["accuracy"]

    # And the accuracy a longer training of the same data reaches (not registered)
    better = _train(maxiter=30, register=False)["metrics"]["quantum"]["accuracy"]
    lead = better - weak_accuracy
    assert lead > 0.05, (weak_accuracy, better)  # a better model, by more than a test sample

    # When its new version must lead by a hair more than it does, the champion stays
    short = _train(maxiter=30, margin=lead + HAIR)
    assert short["training_cached"] is True
    assert short["registered_version"] == "2"
    assert short["promotion"]["promotion.promote"] == "False"
    assert _champion(client) == "1"

    # When it must lead by a hair less, the alias moves to the new version
    clear = _train(maxiter=30, margin=lead - HAIR)
    assert clear["registered_version"] == "3"
    assert clear["promotion"]["promotion.promote"] == "True"
    assert _champion(client) == "3"

    # And the registry records what the next gate will compare against
    champion = client.get_model_version(MODEL, "3")
    assert float(champion.tags["test_accuracy"]) == better
    tags = client.get_run(clear["run_id"]).data.tags
    assert tags["promotion.champion_version"] == "1"
    assert float(tags["promotion.champion"]) == weak_accuracy
