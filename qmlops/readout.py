"""How a classifier turns its circuit's final state into class probabilities.

Both readouts measure expectation values of diagonal observables, ``v_r = Σ_b O[r, b] |ψ_b|²``
(one matrix ``O`` of shape ``(R, 2**n)``), so every engine computes them the same way and
their derivatives with respect to the circuit's weights follow the parameter-shift rule:

* ``"hamming_weight"`` (:class:`~qmlops.circuits.CircuitSpec`'s default, so descriptions saved
  before the option existed keep it): a measured bitstring ``b`` votes for class
  ``popcount(b) mod n_classes``; ``O`` holds one class projector per row, and the values are
  the class probabilities themselves (no trainable head). For two classes this is the parity of
  all qubits; ``K`` classes need ``K <= n_qubits + 1``.
* ``"z_softmax"`` (the default of :class:`~qmlops.classifier.QuantumClassifier` and
  :class:`~qmlops.config.CircuitConfig`): the Pauli-Z expectation ``z_q`` of every qubit
  feeds a trainable classical layer, ``p = softmax(W z + b)`` with ``W`` of shape
  ``(K, n_qubits)`` and ``b`` of length ``K``. The head's ``K * n_qubits + K`` weights follow
  the circuit's weights in the flat weight vector the optimizers train (``W`` row by row, then
  ``b``), and their gradient is analytic. Any number of classes fits any number of qubits.
* ``"zz_softmax"``: as ``"z_softmax"``, with the correlator ``Z_q Z_{q+1}`` of every pair of
  neighbouring qubits after the ``n_qubits`` single-qubit values (``R = 2 n_qubits - 1``, so
  ``W`` is ``(K, 2 n_qubits - 1)``): the head sees second-order features of the measured bits,
  still diagonal and measured from the same shots.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np

ReadoutName = Literal["hamming_weight", "z_softmax", "zz_softmax"]
READOUTS: tuple[str, ...] = get_args(ReadoutName)
SOFTMAX_READOUTS: tuple[str, ...] = ("z_softmax", "zz_softmax")
"""Readouts whose values (expectations of ``±1`` observables) feed a trainable softmax head."""
DEFAULT_READOUT = "hamming_weight"
"""A circuit description's readout when it names none (descriptions saved before readouts)."""

HEAD_INIT_SCALE = 1.0
"""Spread of the head's initial ``W`` (normal, divided by ``sqrt(R)``): logits start of
order one, so the softmax is neither flat (no gradient reaches the circuit) nor saturated."""


def class_of_outcome(n_qubits: int, n_classes: int) -> np.ndarray:
    """Map each basis-state index to a class: Hamming weight modulo ``n_classes``.

    Args:
        n_qubits: Number of measured qubits.
        n_classes: Number of classes.

    Returns:
        Integer array of length ``2**n_qubits``.
    """
    return hamming_weights(n_qubits) % n_classes


def hamming_weights(n_qubits: int) -> np.ndarray:
    """Number of ones in each basis-state index (length ``2**n_qubits``)."""
    outcomes = np.arange(2**n_qubits, dtype=np.uint64)
    weights = np.zeros(outcomes.shape, dtype=np.int64)
    for bit in range(n_qubits):
        weights += ((outcomes >> np.uint64(bit)) & np.uint64(1)).astype(np.int64)
    return weights


def z_eigenvalues(n_qubits: int) -> np.ndarray:
    """``(n_qubits, 2**n_qubits)``: the eigenvalue ``±1`` of ``Z_q`` on every basis state."""
    outcomes = np.arange(2**n_qubits, dtype=np.uint64)
    bits = [(outcomes >> np.uint64(q)) & np.uint64(1) for q in range(n_qubits)]
    return 1.0 - 2.0 * np.stack(bits).astype(np.float64)


def zz_eigenvalues(n_qubits: int) -> np.ndarray:
    """``(2 n_qubits - 1, 2**n_qubits)``: ``Z_q`` for every qubit, then ``Z_q Z_{q+1}``."""
    singles = z_eigenvalues(n_qubits)
    return np.concatenate([singles, singles[:-1] * singles[1:]])


@dataclass(frozen=True)
class ClassReadout:
    """The observables a circuit is measured with and the head that makes them probabilities.

    Attributes:
        name: ``"hamming_weight"``, ``"z_softmax"`` or ``"zz_softmax"`` (see the module
            docstring).
        n_qubits: Measured qubits.
        n_classes: Classes.
    """

    name: str
    n_qubits: int
    n_classes: int

    @property
    def n_values(self) -> int:
        """Expectation values measured per sample (``R``)."""
        if self.name == "hamming_weight":
            return self.n_classes
        return self.n_qubits if self.name == "z_softmax" else 2 * self.n_qubits - 1

    @property
    def has_head(self) -> bool:
        """Whether the values feed a trainable softmax head (they are ``±1`` expectations)."""
        return self.name in SOFTMAX_READOUTS

    @property
    def n_head_weights(self) -> int:
        """Trainable weights of the classical head (``0`` for the Hamming-weight readout)."""
        return self.n_classes * (self.n_values + 1) if self.has_head else 0

    def observables(self) -> np.ndarray:
        """The diagonal of every observable, ``(n_values, 2**n_qubits)``."""
        if self.name == "hamming_weight":
            outcome_class = class_of_outcome(self.n_qubits, self.n_classes)
            return np.eye(self.n_classes)[outcome_class].T.copy()
        if self.name == "z_softmax":
            return z_eigenvalues(self.n_qubits)
        return zz_eigenvalues(self.n_qubits)

    def initial_head(self, rng: np.random.Generator) -> np.ndarray:
        """Seeded starting weights of the head: small random ``W``, zero ``b``."""
        if self.n_head_weights == 0:
            return np.zeros(0)
        scale = HEAD_INIT_SCALE / np.sqrt(self.n_values)
        matrix = rng.normal(0.0, scale, self.n_classes * self.n_values)
        return np.concatenate([matrix, np.zeros(self.n_classes)])

    def _split(self, heads: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``W (M, K, R)`` and ``b (M, K)`` of head weight points ``(M, H)``."""
        n_matrix = self.n_classes * self.n_values
        matrix = heads[:, :n_matrix].reshape(-1, self.n_classes, self.n_values)
        return matrix, heads[:, n_matrix:]

    def probabilities(self, values: np.ndarray, heads: np.ndarray) -> np.ndarray:
        """Class probabilities ``(M, N, K)`` of values ``(M, N, R)`` under heads ``(M, H)``."""
        if self.name == "hamming_weight":
            return values
        matrix, bias = self._split(heads)
        logits = np.einsum("mnr,mkr->mnk", values, matrix) + bias[:, None, :]
        logits -= logits.max(axis=-1, keepdims=True)
        exponentials = np.exp(logits)
        return np.asarray(exponentials / exponentials.sum(axis=-1, keepdims=True))

    def backward(
        self,
        values: np.ndarray,
        head: np.ndarray,
        probability_cotangent: np.ndarray,
        probabilities: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Chain rule through the head at one weight point.

        Args:
            values: Measured values ``(L, R)``.
            head: Head weights ``(H,)``.
            probability_cotangent: ``dL/dp`` ``(L, K)`` at ``p = probabilities(values, head)``.
            probabilities: That ``p`` ``(L, K)``, if the caller already has it.

        Returns:
            ``dL/dv`` ``(L, R)`` and ``dL/dhead`` ``(H,)``.
        """
        if self.name == "hamming_weight":
            return probability_cotangent, np.zeros(0)
        if probabilities is None:
            probabilities = self.probabilities(values[None], head[None])[0]
        # Softmax: dL/dlogit_k = p_k (g_k - Σ_j g_j p_j).
        logits = probabilities * (
            probability_cotangent
            - np.sum(probability_cotangent * probabilities, axis=-1, keepdims=True)
        )
        matrix = self._split(head[None])[0][0]
        head_gradient = np.concatenate([(logits.T @ values).ravel(), logits.sum(axis=0)])
        return logits @ matrix, head_gradient
