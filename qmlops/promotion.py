"""The champion gate: whether a new model version takes the registry's ``champion`` alias.

A pure decision over numbers already measured on the held-out test split; the registry calls
that read the current champion and move the alias live in the ``tasks/tracking/`` package.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass

from qmlops.config import PromotionConfig

CHAMPION_ALIAS = "champion"


@dataclass(frozen=True)
class ChampionRecord:
    """What the gate needs to know about the current champion.

    Attributes:
        version: Its registered version.
        metric: Its held-out value of the deciding metric (None when it was not recorded).
        fingerprint: Fingerprint of the dataset it was evaluated on.
    """

    version: str
    metric: float | None
    fingerprint: str


@dataclass(frozen=True)
class PromotionDecision:
    """The gate's verdict and the figures it compared.

    Attributes:
        promote: Whether the candidate becomes the champion.
        reason: One sentence a person can read in the run's tags.
        metric: Name of the deciding held-out metric.
        candidate: The candidate's value.
        champion: The current champion's value (None without a comparable champion).
        champion_version: The current champion's version (None without one).
        baseline: The best classical baseline's value (None when not required or absent).
        baseline_name: Which baseline that was.
    """

    promote: bool
    reason: str
    metric: str
    candidate: float
    champion: float | None
    champion_version: str | None
    baseline: float | None
    baseline_name: str | None

    def tags(self) -> dict[str, str]:
        """The decision as ``promotion.*`` string tags (empty string for missing figures)."""
        return {
            f"promotion.{key}": "" if value is None else str(value)
            for key, value in asdict(self).items()
        }

    def summary(self) -> str:
        """One line for people: verdict, the compared figures and the reason."""
        verdict = "promoted to champion" if self.promote else "champion kept"
        figures = [f"candidate {self.candidate:.4f}"]
        if self.champion is not None:
            figures.append(f"champion v{self.champion_version} {self.champion:.4f}")
        if self.baseline is not None:
            figures.append(f"{self.baseline_name} {self.baseline:.4f}")
        return f"{verdict} on {self.metric} ({', '.join(figures)}): {self.reason}"


def _beats(candidate: float, other: float, margin: float) -> bool:
    return candidate > other + margin


def decide_promotion(
    candidate_metrics: Mapping[str, float],
    baseline_metrics: Mapping[str, Mapping[str, float]],
    champion: ChampionRecord | None,
    fingerprint: str,
    config: PromotionConfig,
) -> PromotionDecision:
    """Decide whether a candidate model replaces the champion.

    The first registered version becomes the champion; a later one replaces it when it
    exceeds the champion's value by more than ``config.margin`` (ties and missing figures keep
    the champion). A champion evaluated on other data (another dataset fingerprint) is not
    comparable: the candidate, trained on the newer data, replaces it, so a change of data
    never blocks promotion for good. The best classical baseline is always compared and
    reported; it blocks promotion only when ``config.require_beat_baseline`` is on.

    Args:
        candidate_metrics: The candidate's held-out metrics (name to value).
        baseline_metrics: Each classical baseline's held-out metrics.
        champion: The current champion, or None when the alias is unset.
        fingerprint: Fingerprint of the dataset the candidate was evaluated on.
        config: Deciding metric, margin and whether the baseline must be beaten.

    Returns:
        The decision with the compared figures.
    """
    name = config.metric
    candidate = float(candidate_metrics.get(name, math.nan))
    baseline_name, baseline = None, None
    finite = {
        model: float(metrics[name])
        for model, metrics in baseline_metrics.items()
        if math.isfinite(metrics.get(name, math.nan))
    }
    if finite:
        baseline_name = max(finite, key=lambda model: finite[model])
        baseline = finite[baseline_name]

    comparable = champion is not None and champion.fingerprint == fingerprint
    champion_value = champion.metric if comparable and champion is not None else None

    def decision(promote: bool, reason: str) -> PromotionDecision:
        return PromotionDecision(
            promote=promote,
            reason=reason,
            metric=name,
            candidate=candidate,
            champion=champion_value,
            champion_version=None if champion is None else champion.version,
            baseline=baseline,
            baseline_name=baseline_name,
        )

    if not math.isfinite(candidate):
        return decision(False, f"candidate has no finite {name}")
    below_baseline = baseline is not None and not _beats(candidate, baseline, 0.0)
    if below_baseline and config.require_beat_baseline:
        return decision(
            False, f"{name} {candidate:.4f} does not beat {baseline_name} {baseline:.4f}"
        )
    note = (
        f" (below {baseline_name} {baseline:.4f}; not required)"
        if below_baseline and baseline is not None
        else ""
    )
    if champion is None:
        return decision(True, "no champion yet" + note)
    if not comparable:
        return decision(
            True,
            f"champion v{champion.version} was evaluated on other data "
            f"(fingerprint {champion.fingerprint[:12] or 'unknown'}); the candidate, trained "
            "on the newer data, replaces it" + note,
        )
    if champion.metric is None or not math.isfinite(champion.metric):
        return decision(False, f"champion v{champion.version} has no recorded {name}")
    if not _beats(candidate, champion.metric, config.margin):
        return decision(
            False,
            f"{name} {candidate:.4f} does not beat champion v{champion.version} "
            f"{champion.metric:.4f} by more than {config.margin}",
        )
    return decision(
        True,
        f"{name} {candidate:.4f} beats champion v{champion.version} {champion.metric:.4f} "
        f"by more than {config.margin}" + note,
    )
