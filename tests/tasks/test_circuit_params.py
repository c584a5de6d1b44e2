"""The circuit settings reach MLflow as params, so a sweep over them is one comparison."""

from __future__ import annotations

from qmlops.config import CircuitConfig
from tasks.tracking.records import config_params


def test_reuploads_is_logged_with_the_circuit() -> None:
    circuit = CircuitConfig(n_qubits=2, feature_map="zz", reuploads=3)
    params = {p.key: p.value for p in config_params({"circuit": circuit.model_dump()}, {})}
    assert params["circuit.reuploads"] == "3"
    assert params["circuit.feature_map"] == "zz"
