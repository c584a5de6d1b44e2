"""Prefect artifacts: the human-readable summary of a training run."""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from qmlops.metrics import METRIC_NAMES
from qmlops.model_summary import summary_rows


@task(name="publish-summary", retries=0, cache_policy=NO_CACHE)
def publish_summary(
    evaluations: dict[str, dict[str, Any]], details: dict[str, Any], key: str = "train-summary"
) -> str:
    """Publish a markdown artifact comparing the quantum model with the baselines.

    Returns:
        The markdown text.
    """
    header = "| model | " + " | ".join(METRIC_NAMES) + " |"
    lines = [header, "|" + "---|" * (len(METRIC_NAMES) + 1)]
    for row in summary_rows(evaluations):
        lines.append("| " + " | ".join(row) + " |")
    facts = "\n".join(f"- **{name}**: {value}" for name, value in details.items())
    markdown = "## Quantum classifier vs. classical baselines (test split)\n\n"
    markdown += "\n".join(lines) + "\n\n" + facts + "\n"
    create_markdown_artifact(markdown=markdown, key=key, description="qmlops training summary")
    return markdown
