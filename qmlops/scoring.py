"""Batch scoring helpers: check input against a model's signature, write predictions.

Pure functions; loading the registered model and recording the scoring run live in
the ``tasks/tracking/`` package.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from qmlops.data import non_numeric_columns
from qmlops.errors import DatasetError, SchemaMismatchError

OUTPUT_SUFFIXES = (".csv", ".parquet", ".pq")


def match_signature(frame: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    """Check that a table has exactly the model's input columns, numeric and finite.

    Args:
        frame: The table to score.
        columns: The model signature's input column names, in order.

    Returns:
        The feature columns in signature order, as floats.

    Raises:
        SchemaMismatchError: If columns are missing or unexpected, not numeric, or hold NaN or
            infinite values.
    """
    present = [str(c) for c in frame.columns]
    missing = [c for c in columns if c not in present]
    unexpected = [c for c in present if c not in columns]
    if missing or unexpected:
        raise SchemaMismatchError(
            f"input columns do not match the model's signature {list(columns)}: "
            f"missing {missing}, unexpected {unexpected}"
        )
    features = frame[list(columns)]
    non_numeric = non_numeric_columns(features)
    if non_numeric:
        raise SchemaMismatchError(
            f"the model's signature expects numbers; non-numeric columns {non_numeric}"
        )
    values = features.to_numpy(dtype=np.float64)
    bad = ~np.isfinite(values)
    if bad.any():
        names = [columns[int(j)] for j in np.flatnonzero(bad.any(axis=0))]
        raise SchemaMismatchError(f"NaN or infinite values in input columns {names}")
    return pd.DataFrame(values, columns=list(columns), index=frame.index)


def check_output_path(path: str | Path) -> Path:
    """Validate where predictions go before anything is scored.

    Raises:
        DatasetError: For an unsupported file type or a missing parent folder.
    """
    output = Path(path)
    if output.suffix.lower() not in OUTPUT_SUFFIXES:
        raise DatasetError(f"unsupported output type {output.suffix!r}; use .csv or .parquet")
    if not output.parent.is_dir():
        raise DatasetError(f"output folder does not exist: {output.parent}")
    return output


def write_table(frame: pd.DataFrame, path: str | Path) -> Path:
    """Write a table as CSV or Parquet (by suffix), atomically.

    Returns:
        The written path.
    """
    output = check_output_path(path)
    partial = output.with_name(f".{output.name}.partial")
    if output.suffix.lower() == ".csv":
        frame.to_csv(partial, index=False)
    else:
        frame.to_parquet(partial, index=False)
    partial.replace(output)
    return output
