"""Data re-uploading: blocks of [feature map, ansatz], exact on both engines and in the gradient.

The reference is ``qiskit.quantum_info.Statevector`` run on :meth:`CircuitSpec.circuit`, with
the Hamming-weight readout written out here; Aer's exact estimator is checked once per feature
map. Gradients are checked against parameter shift and finite differences.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from core_circuits import check_adjoint_gradient
from core_data import blobs
from qiskit import QuantumCircuit
from qiskit.quantum_info import Statevector

import qmlops.simulation as simulation
from qmlops import QuantumClassifier
from qmlops.circuits import ANSATZE, CircuitSpec
from qmlops.devices import NoiseParameters, resolve_device
from qmlops.errors import ConfigurationError
from qmlops.noisy import DeviceEvaluator, measured_circuit
from qmlops.simulation import CircuitEvaluator, UnsupportedCircuitError, planned_backend


def _reference(spec: CircuitSpec, features: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Class probabilities ``(M, N, K)`` of the whole circuit from Qiskit's statevector."""
    circuit = spec.circuit()
    hamming = np.array([bin(state).count("1") for state in range(2**spec.n_qubits)])
    out = np.zeros((weights.shape[0], features.shape[0], spec.n_classes))
    for (m, point), (n, sample) in itertools.product(enumerate(weights), enumerate(features)):
        # x[i] -> feature i on every upload, θ[j] -> weight j.
        values = {
            p: sample[p.index] if p.vector.name == "x" else point[p.index]
            for p in circuit.parameters
        }
        probabilities = Statevector(circuit.assign_parameters(values)).probabilities()
        out[m, n] = np.bincount(
            hamming % spec.n_classes, weights=probabilities, minlength=spec.n_classes
        )
    return out


def _reuploaded(n_qubits: int, n_classes: int, *case: str | int) -> CircuitSpec:
    """``reuploads`` blocks of [feature map, one-repetition ansatz] for a case as in CASES."""
    names = ("feature_map", "ansatz", "entanglement", "reuploads", "feature_map_reps")
    fields = dict(zip(names, case, strict=True))
    return CircuitSpec(n_qubits=n_qubits, n_classes=n_classes, ansatz_reps=1, **fields)


CASES = [
    # (feature map, ansatz, entanglement, reuploads, feature-map repetitions)
    *((fm, an, "reverse_linear", 2, 1) for fm, an in itertools.product(("z", "zz"), ANSATZE)),
    ("zz", "real_amplitudes", "full", 3, 1),
    ("zz", "efficient_su2", "circular", 3, 2),
    ("z", "efficient_su2", "pairwise", 3, 2),
    ("zz", "real_amplitudes", "linear", 2, 2),
]


@pytest.mark.parametrize(("feature_map", "ansatz", "entanglement", "reuploads", "fm_reps"), CASES)
def test_numpy_engine_matches_statevector(
    feature_map: str, ansatz: str, entanglement: str, reuploads: int, fm_reps: int
) -> None:
    spec = _reuploaded(3, 3, feature_map, ansatz, entanglement, reuploads, fm_reps)
    rng = np.random.default_rng(
        CASES.index((feature_map, ansatz, entanglement, reuploads, fm_reps))
    )
    features = rng.uniform(0.0, 2.2, (4, 3))
    weights = rng.uniform(-np.pi, np.pi, (2, spec.n_weights))
    rows = np.array([3, 0, 2])  # a mini-batch
    expected = _reference(spec, features[rows], weights)
    assert np.max(np.abs(expected[0] - expected[1])) > 1e-4  # the weights matter
    for path in ("never", "always"):  # state by state, and by each block's unitary
        evaluator = CircuitEvaluator(spec, backend="numpy")
        evaluator.unitary_path = path
        got = evaluator.class_probabilities([(features, weights, rows)])[0]
        np.testing.assert_allclose(got, expected, atol=1e-9, err_msg=path)


@pytest.mark.parametrize("feature_map", ["z", "zz"])
def test_numpy_engine_matches_aer(feature_map: str) -> None:
    spec = CircuitSpec(n_qubits=3, n_classes=2, feature_map=feature_map, ansatz_reps=1, reuploads=3)
    rng = np.random.default_rng(1)
    features = rng.uniform(0.0, 2.2, (5, 3))
    weights = rng.uniform(-np.pi, np.pi, (2, spec.n_weights))
    numpy_engine = CircuitEvaluator(spec, backend="numpy")
    aer = CircuitEvaluator(spec, backend="aer")
    np.testing.assert_allclose(
        numpy_engine.class_probabilities([(features, weights)])[0],
        aer.class_probabilities([(features, weights)])[0],
        atol=1e-9,
    )


@pytest.mark.parametrize(
    ("feature_map", "ansatz", "entanglement", "fm_reps"),
    [
        ("z", "real_amplitudes", "reverse_linear", 1),
        ("zz", "efficient_su2", "full", 1),
        ("zz", "real_amplitudes", "circular", 2),
        ("z", "efficient_su2", "linear", 2),
    ],
)
@pytest.mark.parametrize("reuploads", [2, 3])
def test_adjoint_gradient_equals_parameter_shift_and_finite_differences(
    feature_map: str, ansatz: str, entanglement: str, fm_reps: int, reuploads: int
) -> None:
    spec = _reuploaded(4, 3, feature_map, ansatz, entanglement, reuploads, fm_reps)
    rng = np.random.default_rng(reuploads)
    features = rng.uniform(0.0, 2.2, (12, 4))
    weights = rng.uniform(-np.pi, np.pi, spec.n_weights)
    rows = np.sort(rng.choice(12, size=7, replace=False))
    targets = rng.integers(0, 3, 12)[rows]
    shifted = check_adjoint_gradient(spec, features, weights, targets, rows, difference_atol=1e-8)
    # Every block has a gradient (a sweep that stopped at the last block would leave zeros).
    for block in np.split(shifted, reuploads):
        assert np.max(np.abs(block)) > 1e-3


def _gates(circuit: QuantumCircuit) -> list[tuple[str, tuple[int, ...], tuple[str, ...]]]:
    """Each gate's name, qubits and parameter expressions (parameters compare by name)."""
    return [
        (
            instruction.operation.name,
            tuple(circuit.find_bit(qubit).index for qubit in instruction.qubits),
            tuple(str(angle) for angle in instruction.operation.params),
        )
        for instruction in circuit.data
    ]


def test_one_upload_is_the_plain_circuit() -> None:
    spec = CircuitSpec(n_qubits=3, n_classes=2, feature_map="zz")
    assert spec.reuploads == 1
    plain = spec.feature_map_circuit().compose(spec.ansatz_circuit())
    assert _gates(spec.circuit()) == _gates(plain)
    assert spec.n_weights == spec.n_block_weights == plain.num_parameters - 3
    twice = CircuitSpec(n_qubits=3, n_classes=2, feature_map="zz", reuploads=2)
    assert twice.n_weights == 2 * spec.n_weights
    assert twice.circuit().num_parameters == 3 + twice.n_weights


def test_circuit_blocks_have_their_own_weights_in_order() -> None:
    spec = CircuitSpec(n_qubits=2, n_classes=2, feature_map="z", ansatz_reps=1, reuploads=3)
    circuit = spec.circuit()
    weights = [p for p in circuit.parameters if p.vector.name != "x"]
    assert [p.index for p in weights] == list(range(spec.n_weights))
    # Block r's weights θ[rP..] come after the r-th upload of x[0] and before the next one.
    size = spec.n_block_weights
    order = [
        parameter.name
        for instruction in circuit.data
        for angle in instruction.operation.params
        for parameter in getattr(angle, "parameters", ())
    ]
    uploads = [i for i, name in enumerate(order) if name == "x[0]"]
    assert len(uploads) == 3
    for block in range(3):
        positions = [order.index(f"θ[{block * size + k}]") for k in range(size)]
        assert min(positions) > uploads[block]
        assert block == 2 or max(positions) < uploads[block + 1]


def test_old_descriptions_and_models_load_with_one_upload() -> None:
    spec = CircuitSpec(n_qubits=2, n_classes=2)
    old = spec.to_dict()
    del old["reuploads"]
    assert CircuitSpec.from_dict(old) == spec
    X, y = blobs(12, 2, 2)
    # Saved before re-uploading existed: one upload, the Hamming-weight readout.
    model = QuantumClassifier(
        readout="hamming_weight", reuploads=1, ansatz_reps=1, maxiter=2, random_state=0
    ).fit(X, y)
    state = model.to_state()
    del state["params"]["reuploads"], state["spec"]["reuploads"]
    restored = QuantumClassifier.from_state(state)
    assert restored.reuploads == 1
    np.testing.assert_allclose(restored.predict_proba(X), model.predict_proba(X), atol=1e-12)


def test_classifier_trains_one_call_per_step_and_round_trips() -> None:
    X, y = blobs(16, 2, 2)
    # The parity readout: the last check reads class 1 off the bound circuit's state.
    model = QuantumClassifier(
        feature_map="zz",
        ansatz_reps=1,
        reuploads=2,
        readout="hamming_weight",
        maxiter=5,
        batch_size=8,
        random_state=0,
    ).fit(X, y)
    assert (model.backend_, model.gradient_) == ("numpy", "adjoint")
    assert model.spec_.reuploads == 2
    assert model.weights_.shape == (model.spec_.n_weights,)
    assert model.primitive_calls_ == model.maxiter + 1  # one batched call per step
    assert model.loss_curve_[-1] < model.loss_curve_[0]
    restored = QuantumClassifier.from_state(model.to_state())
    np.testing.assert_allclose(restored.predict_proba(X), model.predict_proba(X), atol=1e-12)
    # The bound circuit holds every upload's features and no free weight.
    circuit = model.circuit_
    assert {p.name for p in circuit.parameters} == {"x[0]", "x[1]"}
    assert circuit.count_ops()  # non-empty
    state = Statevector(circuit.assign_parameters(X[0])).probabilities()
    assert state[[1, 2]].sum() == pytest.approx(model.predict_proba(X[:1])[0, 1], abs=1e-9)


def test_pauli_map_reuploads_on_aer_only() -> None:
    spec = CircuitSpec(n_qubits=2, n_classes=2, feature_map="pauli", reuploads=2)
    assert planned_backend(spec, None, "auto") == "aer"
    with pytest.raises(UnsupportedCircuitError, match="re-uploads"):
        planned_backend(spec, None, "numpy")
    X, y = blobs(12, 2, 2)
    with pytest.raises(ConfigurationError, match="adjoint"):
        QuantumClassifier(feature_map="pauli", reuploads=2, gradient="adjoint").plan(12, 0, 2, 2)
    model = QuantumClassifier(
        feature_map="pauli", ansatz_reps=1, reuploads=2, maxiter=1, batch_size=4, random_state=0
    ).fit(X, y)
    assert (model.backend_, model.gradient_) == ("aer", "parameter_shift")


@pytest.mark.parametrize("reuploads", [0, 11, 1.5, True])
def test_bad_upload_counts_are_refused(reuploads: object) -> None:
    with pytest.raises(ConfigurationError, match="reuploads"):
        QuantumClassifier(reuploads=reuploads).plan(12, 0, 2, 2)  # type: ignore[arg-type]


def test_size_guard_counts_every_block_and_the_phase_cache() -> None:
    one = CircuitSpec(n_qubits=8, n_classes=2, ansatz_reps=1)
    three = CircuitSpec(n_qubits=8, n_classes=2, ansatz_reps=1, reuploads=3)
    assert simulation.adjoint_states_held(three, 48, 1) > simulation.adjoint_states_held(one, 48, 1)
    plain = QuantumClassifier(feature_map_reps=2, reuploads=2, optimizer="cobyla")
    _, with_phases = plain.plan(100, 0, 8, 2)
    one_upload = QuantumClassifier(feature_map_reps=2, reuploads=1, optimizer="cobyla")
    _, without = one_upload.plan(100, 0, 8, 2)
    assert with_phases.peak_memory_bytes == without.peak_memory_bytes + 100 * 16 * 2**8


def test_device_circuit_holds_every_upload() -> None:
    spec = CircuitSpec(n_qubits=2, n_classes=2, feature_map="z", reuploads=3)
    measured = measured_circuit(spec)
    assert measured.num_parameters == 2 + spec.n_weights
    assert measured.count_ops()["measure"] == 2
    plain = measured_circuit(CircuitSpec(n_qubits=2, n_classes=2, feature_map="z"))
    assert measured.decompose().count_ops().get("p", 0) == 3 * plain.decompose().count_ops().get(
        "p", 0
    )


def test_device_evaluator_runs_the_reuploaded_circuit() -> None:
    X, y = blobs(12, 2, 2)
    model = QuantumClassifier(
        feature_map="zz", ansatz_reps=1, reuploads=2, maxiter=3, random_state=0
    ).fit(X, y)
    quiet = resolve_device("noise:depolarizing", NoiseParameters(0.0, 0.0, 0.0))
    evaluator = DeviceEvaluator(model.spec_, quiet, shots=4000, seed=1)
    sampled = evaluator.class_probabilities([(X, model.weights_[None, :])])[0][0]
    assert np.abs(sampled - model.predict_proba(X)).max() < 0.05  # shot noise only
