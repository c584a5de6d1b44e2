"""Foreground runs (the CLI) skip Prefect's flow-run heartbeats unless they are configured."""

from __future__ import annotations

import pytest
from prefect import flow
from prefect.settings import get_current_settings

from flows.heartbeats import without_flow_heartbeats


@flow
def heartbeat_setting() -> int | None:
    """The heartbeat interval the flow engine sees for this run."""
    return get_current_settings().flows.heartbeat_frequency


def test_runs_inside_the_block_have_no_heartbeat(
    prefect_harness: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("PREFECT_FLOWS_HEARTBEAT_FREQUENCY", "PREFECT_RUNNER_HEARTBEAT_FREQUENCY"):
        monkeypatch.delenv(name, raising=False)
    default = heartbeat_setting()
    with without_flow_heartbeats():
        inside = heartbeat_setting()
    assert default is not None  # Prefect's default: heartbeats on
    assert inside is None
    assert heartbeat_setting() == default  # restored after the block


def test_explicit_heartbeat_setting_is_respected(
    prefect_harness: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PREFECT_FLOWS_HEARTBEAT_FREQUENCY", "60")
    outside = heartbeat_setting()
    with without_flow_heartbeats():
        assert heartbeat_setting() == outside
    assert outside is not None
