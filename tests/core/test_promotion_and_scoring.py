"""The champion gate's rule and the scoring input checks, on plain numbers and tiny tables."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from qmlops.config import PromotionConfig
from qmlops.errors import DatasetError, SchemaMismatchError
from qmlops.promotion import ChampionRecord, decide_promotion
from qmlops.scoring import match_signature, write_table

BASELINES = {"svc": {"accuracy": 0.80}, "logistic_regression": {"accuracy": 0.70}}
DATA = "f" * 64


def _decide(candidate: float, champion: ChampionRecord | None, **config: object):
    return decide_promotion(
        {"accuracy": candidate}, BASELINES, champion, DATA, PromotionConfig(**config)
    )


def test_the_first_model_becomes_champion() -> None:
    decision = _decide(0.85, None)
    assert decision.promote
    assert decision.baseline == 0.80
    assert decision.baseline_name == "svc"
    assert decision.tags()["promotion.promote"] == "True"
    assert decision.tags()["promotion.champion"] == ""


def test_a_model_below_the_best_baseline_is_promoted_with_the_comparison_reported() -> None:
    # The nightly iris model (0.933) never beat SVC (0.967): with the old default no champion
    # ever existed and scoring always failed.
    decision = _decide(0.75, None)
    assert decision.promote
    assert (decision.baseline, decision.baseline_name) == (0.80, "svc")
    assert "below svc 0.8000; not required" in decision.reason


def test_beating_the_baseline_can_be_required() -> None:
    strict = _decide(0.75, None, require_beat_baseline=True)
    assert not strict.promote
    assert "does not beat svc" in strict.reason
    assert _decide(0.85, None, require_beat_baseline=True).promote


def test_champion_moves_only_when_beaten_by_more_than_the_margin() -> None:
    champion = ChampionRecord(version="3", metric=0.85, fingerprint=DATA)
    assert _decide(0.90, champion).promote
    tie = _decide(0.85, champion)
    assert not tie.promote
    assert (tie.candidate, tie.champion, tie.champion_version) == (0.85, 0.85, "3")
    assert not _decide(0.87, champion, margin=0.05).promote
    assert _decide(0.91, champion, margin=0.05).promote


def test_a_champion_on_other_data_is_replaced_not_compared() -> None:
    # A higher champion value on other data must not block forever: the figures are not
    # comparable, and the candidate was trained on the newer data.
    champion = ChampionRecord(version="1", metric=0.99, fingerprint="0" * 64)
    decision = _decide(0.50, champion)
    assert decision.promote
    assert "other data" in decision.reason
    assert decision.champion is None
    assert decision.champion_version == "1"


def test_the_deciding_metric_is_configurable() -> None:
    champion = ChampionRecord(version="1", metric=0.70, fingerprint=DATA)
    decision = decide_promotion(
        {"accuracy": 0.5, "f1_macro": 0.9},
        {"svc": {"f1_macro": 0.6}},
        champion,
        DATA,
        PromotionConfig(metric="f1_macro"),
    )
    assert decision.promote
    assert decision.metric == "f1_macro"
    assert "promoted" in decision.summary()


def test_match_signature_orders_and_converts_columns() -> None:
    frame = pd.DataFrame({"b": [1, 2], "a": [3.0, 4.0]})
    matched = match_signature(frame, ["a", "b"])
    assert list(matched.columns) == ["a", "b"]
    assert matched.to_numpy().dtype == np.float64


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        (pd.DataFrame({"a": [1.0]}), r"missing \['b'\]"),
        (pd.DataFrame({"a": [1.0], "b": [2.0], "label": [0]}), r"unexpected \['label'\]"),
        (pd.DataFrame({"a": [1.0], "b": ["x"]}), r"non-numeric columns \['b'\]"),
        (pd.DataFrame({"a": [1.0], "b": [np.nan]}), r"NaN or infinite values .*\['b'\]"),
    ],
)
def test_match_signature_rejects_mismatched_input(frame: pd.DataFrame, message: str) -> None:
    with pytest.raises(SchemaMismatchError, match=message):
        match_signature(frame, ["a", "b"])


def test_write_table_by_suffix(tmp_path: Path) -> None:
    frame = pd.DataFrame({"prediction": ["x", "y"], "probability_x": [0.9, 0.2]})
    write_table(frame, tmp_path / "out.parquet")
    assert pd.read_parquet(tmp_path / "out.parquet").equals(frame)
    write_table(frame, tmp_path / "out.csv")
    assert list(pd.read_csv(tmp_path / "out.csv")["prediction"]) == ["x", "y"]
    with pytest.raises(DatasetError, match="unsupported output type"):
        write_table(frame, tmp_path / "out.txt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.csv", "out.parquet"]
