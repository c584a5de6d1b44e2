"""Figures for the experiment record (matplotlib, headless).

Built on matplotlib's object API (``Figure``), not ``pyplot``: pyplot keeps a global registry of
open figures that is not thread-safe, and sweeps log runs from several threads at once. Only
Qiskit's circuit drawer goes through pyplot, so it runs under :data:`PYPLOT_LOCK`.
"""

from __future__ import annotations

import functools
import io
import threading
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from qiskit import QuantumCircuit  # noqa: E402

from qmlops.circuits import CircuitSpec  # noqa: E402

PNG_DPI = 110
PYPLOT_LOCK = threading.RLock()
"""Held around every use of ``pyplot`` (its figure registry is process-wide)."""


def training_curves_figure(
    loss: Sequence[float],
    train_accuracy: Sequence[float],
    validation_accuracy: Sequence[float] = (),
) -> Figure:
    """Loss and accuracy per iteration."""
    figure = Figure(figsize=(10, 4))
    loss_axis, accuracy_axis = figure.subplots(1, 2)
    loss_axis.plot(range(len(loss)), loss, color="tab:blue")
    loss_axis.set(xlabel="iteration", ylabel="cross-entropy loss", title="Training loss")
    accuracy_axis.plot(range(len(train_accuracy)), train_accuracy, label="train (batch)")
    if len(validation_accuracy):
        accuracy_axis.plot(range(len(validation_accuracy)), validation_accuracy, label="validation")
    accuracy_axis.set(xlabel="iteration", ylabel="accuracy", ylim=(0, 1.02), title="Accuracy")
    accuracy_axis.legend()
    figure.tight_layout()
    return figure


def confusion_matrix_figure(matrix: Sequence[Sequence[int]], labels: Sequence[str]) -> Figure:
    """Annotated confusion matrix (rows: true class, columns: predicted class)."""
    figure = Figure(figsize=(1.2 * len(labels) + 3, 1.2 * len(labels) + 2.5))
    axis = figure.subplots()
    image = axis.imshow(matrix, cmap="Blues")
    figure.colorbar(image, ax=axis)
    axis.set(
        xticks=range(len(labels)),
        yticks=range(len(labels)),
        xticklabels=labels,
        yticklabels=labels,
        xlabel="predicted",
        ylabel="true",
        title="Confusion matrix (test)",
    )
    darkest = max((max(row) for row in matrix), default=0)
    for i, row in enumerate(matrix):
        for j, count in enumerate(row):
            # Light text on the dark cells keeps every count readable.
            color = "white" if darkest and count > darkest / 2 else "black"
            axis.text(j, i, str(count), ha="center", va="center", color=color)
    figure.tight_layout()
    return figure


def circuit_figure(circuit: QuantumCircuit) -> Figure:
    """Circuit diagram (Qiskit's matplotlib drawer); release it with :func:`close`."""
    with PYPLOT_LOCK:
        figure = circuit.draw(output="mpl", fold=40)
    assert isinstance(figure, Figure)
    return figure


def png(figure: Figure, tight: bool = False) -> bytes:
    """Render a figure as PNG and release it.

    Args:
        figure: The figure (closed afterwards).
        tight: Crop to the drawn content (one more layout pass; figures made here already
            lay themselves out, the circuit drawer's do not).

    Returns:
        The PNG bytes.
    """
    buffer = io.BytesIO()
    try:
        figure.savefig(buffer, format="png", dpi=PNG_DPI, bbox_inches="tight" if tight else None)
    finally:
        close(figure)
    return buffer.getvalue()


@functools.lru_cache(maxsize=32)
def circuit_png(spec: CircuitSpec) -> bytes:
    """The circuit diagram of a circuit description as PNG, drawn once per description.

    Drawing took about 0.4 s here, the costliest figure of a run; a sweep logs the same
    circuit in every run that varies only seeds or training settings.
    """
    return png(circuit_figure(spec.circuit()), tight=True)


def close(figure: Figure) -> None:
    """Release a figure's memory (unregister it from pyplot if it was made there)."""
    with PYPLOT_LOCK:
        plt.close(figure)
