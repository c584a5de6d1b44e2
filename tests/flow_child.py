"""Run the ``train`` flow in this (child) process and write its outcome as JSON.

Usage: ``python flow_child.py PARAMS.json OUTCOME.json``. Started by ``services.start_flow``
so tests can signal or kill a real flow process.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(params_path: str, outcome_path: str) -> int:
    from flows.train import train
    from qmlops.config import CircuitConfig, DatasetConfig, TrackingConfig, TrainingConfig

    spec = json.loads(Path(params_path).read_text())
    state = train(
        dataset=DatasetConfig(**spec.get("dataset", {})),
        circuit=CircuitConfig(**spec.get("circuit", {})),
        training=TrainingConfig(**spec.get("training", {})),
        tracking=TrackingConfig(**spec.get("tracking", {})),
        force=spec.get("force", False),
        return_state=True,
    )
    outcome: dict = {"state": state.name, "flow_run_id": str(state.state_details.flow_run_id)}
    try:
        outcome["result"] = state.result()
    except BaseException as error:  # noqa: BLE001 - reported to the parent test
        outcome["error"] = f"{type(error).__name__}: {error}"
    Path(outcome_path).write_text(json.dumps(outcome, default=str))
    return 0 if state.is_completed() else 1


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
