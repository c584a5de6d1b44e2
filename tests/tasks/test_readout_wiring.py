"""The readout setting reaches the estimator and the MLflow params.

The command line option is in ``tests/test_cli_mapping.py``; the cache and checkpoint keys
cover every circuit field in ``tests/tasks/test_cache_keys.py``.
"""

from __future__ import annotations

from typing import get_args

from qmlops.config import CircuitConfig, TrainingConfig
from qmlops.readout import READOUTS
from tasks.tracking.records import config_params
from tasks.training import build_classifier


def test_the_form_offers_every_readout_the_core_knows() -> None:
    # The flow's form, the CLI's choices and the sweep space read this Literal.
    assert get_args(CircuitConfig.model_fields["readout"].annotation) == READOUTS
    pairs = CircuitConfig(n_qubits=3, readout="zz_softmax")
    assert build_classifier(pairs, TrainingConfig()).readout == "zz_softmax"
    params = {p.key: p.value for p in config_params({"circuit": pairs.model_dump()}, {})}
    assert params["circuit.readout"] == "zz_softmax"


def test_the_readout_setting_builds_the_estimator_and_is_logged() -> None:
    circuit = CircuitConfig(n_qubits=2, readout="hamming_weight")
    assert build_classifier(circuit, TrainingConfig()).readout == "hamming_weight"
    assert build_classifier(CircuitConfig(), TrainingConfig()).readout == "z_softmax"
    params = {p.key: p.value for p in config_params({"circuit": circuit.model_dump()}, {})}
    assert params["circuit.readout"] == "hamming_weight"
    defaults = {
        p.key: p.value for p in config_params({"circuit": CircuitConfig().model_dump()}, {})
    }
    assert (defaults["circuit.readout"], defaults["circuit.reuploads"]) == ("z_softmax", "2")
