"""Content digests: canonical JSON, array fingerprints and the core's code version.

Shared by the checkpoints (job keys, snapshot checksums), the model document's hash, the data
fingerprints and the result cache's keys: one definition of "the same content".
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np


def canonical_json(value: Any) -> str:
    """A JSON-able value in canonical form (sorted keys, no whitespace, no NaN)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)


def canonical_digest(value: Any) -> str:
    """SHA-256 of a JSON-able value in canonical form (sorted keys, no whitespace)."""
    return hashlib.sha256(canonical_json(value).encode()).hexdigest()


def array_digest(*arrays: np.ndarray | None) -> str:
    """SHA-256 over arrays' dtypes, shapes and bytes (``None`` entries count as absent)."""
    digest = hashlib.sha256()
    for array in arrays:
        if array is None:
            digest.update(b"none")
            continue
        array = np.ascontiguousarray(array)
        if array.dtype.kind in "OUS":
            digest.update(json.dumps([str(v) for v in array.ravel().tolist()]).encode())
        else:
            digest.update(array.tobytes())
        digest.update(f"{array.dtype.str}{array.shape}".encode())
    return digest.hexdigest()


@functools.cache
def code_version() -> str:
    """Version of the core's code: package version plus a hash of every ``qmlops`` source.

    A change to any module that can influence a trained result gives new keys, so stale
    checkpoints and cached results are never reused across code changes.
    """
    from qmlops import __version__

    digest = hashlib.sha256(__version__.encode())
    for source in sorted(Path(__file__).parent.glob("*.py")):
        digest.update(source.name.encode())
        digest.update(source.read_bytes())
    return f"{__version__}+{digest.hexdigest()[:16]}"
