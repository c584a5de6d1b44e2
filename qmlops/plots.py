"""Figures for the experiment record (matplotlib, headless).

Built on matplotlib's object API (``Figure`` on an Agg canvas), not ``pyplot``: pyplot keeps a
process-wide registry of open figures that is not thread-safe (sweeps log runs from several
threads at once) and draws through the process's backend, which this module neither needs nor
changes. Qiskit's circuit drawer is given an ``Axes`` of such a figure, so it does not use
pyplot either.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Sequence
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from qiskit import QuantumCircuit

from qmlops.circuits import CircuitSpec

PNG_DPI = 110
# Inches per unit of Qiskit's drawing coordinates at which its drawer keeps its own font size
# on a given Axes (it scales fonts by the Axes' width over this).
_QISKIT_INCHES_PER_UNIT = 0.8361111**2


def agg_figure(**kwargs: Any) -> Figure:
    """A figure drawn by the Agg renderer, outside pyplot (``kwargs`` go to ``Figure``)."""
    figure = Figure(**kwargs)
    FigureCanvasAgg(figure)
    return figure


def training_curves_figure(
    loss: Sequence[float],
    train_accuracy: Sequence[float],
    validation_accuracy: Sequence[float] = (),
) -> Figure:
    """Loss and accuracy per iteration."""
    figure = agg_figure(figsize=(10, 4))
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
    figure = agg_figure(figsize=(1.2 * len(labels) + 3, 1.2 * len(labels) + 2.5))
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
    """Circuit diagram (Qiskit's matplotlib drawer) on a figure the size of the drawing."""
    # On a given Axes the drawer fits the drawing to the Axes' width: a first drawing measures
    # it, the second fills a figure of its size at the drawer's usual font size.
    measured = agg_figure().add_axes((0, 0, 1, 1))
    circuit.draw(output="mpl", fold=40, ax=measured)
    (left, right), (bottom, top) = measured.get_xlim(), measured.get_ylim()
    size = (
        abs(right - left) * _QISKIT_INCHES_PER_UNIT,
        abs(top - bottom) * _QISKIT_INCHES_PER_UNIT,
    )
    figure = agg_figure(figsize=size)
    circuit.draw(output="mpl", fold=40, ax=figure.add_axes((0, 0, 1, 1)))
    return figure


def png(figure: Figure, tight: bool = False) -> bytes:
    """Render a figure as PNG.

    Args:
        figure: The figure (not registered anywhere: it is freed with its last reference).
        tight: Crop to the drawn content (one more layout pass; figures made here already
            lay themselves out, the circuit drawer's do not).

    Returns:
        The PNG bytes.
    """
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=PNG_DPI, bbox_inches="tight" if tight else None)
    return buffer.getvalue()


@functools.lru_cache(maxsize=32)
def circuit_png(spec: CircuitSpec) -> bytes:
    """The circuit diagram of a circuit description as PNG, drawn once per description.

    Drawing took about 0.4 s here, the costliest figure of a run; a sweep logs the same
    circuit in every run that varies only seeds or training settings.
    """
    return png(circuit_figure(spec.circuit()), tight=True)
