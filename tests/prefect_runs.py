"""Read back what Prefect recorded about a flow run's tasks."""

from __future__ import annotations

import asyncio

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.settings import PREFECT_API_URL, temporary_settings


async def _read(flow_run_id: str) -> dict[str, int]:
    async with get_client() as client:
        runs = await client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
    counts: dict[str, int] = {}
    for run in runs:
        name = run.name.rsplit("-", 1)[0]
        counts[name] = max(counts.get(name, 0), run.run_count)
    return counts


def task_run_counts(flow_run_id: str, api_url: str | None = None) -> dict[str, int]:
    """Task name (without its run suffix) -> the highest run count among its task runs.

    Args:
        flow_run_id: The flow run.
        api_url: The Prefect API that ran it (default: the one this process uses).
    """
    if api_url is None:
        return asyncio.run(_read(flow_run_id))
    with temporary_settings(updates={PREFECT_API_URL: api_url}):
        return asyncio.run(_read(flow_run_id))
