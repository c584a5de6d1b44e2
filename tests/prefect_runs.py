"""Read back what Prefect recorded about a flow run's tasks (through the current API client)."""

from __future__ import annotations

import asyncio

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId


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


def task_run_counts(flow_run_id: str) -> dict[str, int]:
    """Task name (without its run suffix) -> the highest run count among its task runs."""
    return asyncio.run(_read(flow_run_id))
