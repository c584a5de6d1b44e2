"""Training checkpoints: atomic, checksummed snapshots of an optimizer's state.

A :class:`CheckpointStore` keeps the last few snapshots of one training job in a folder named
by a key derived from everything the result depends on (data, configuration, seed, code
version; see :func:`training_key`). A snapshot is written to a temporary file, flushed to
disk and renamed into place, so a reader sees either the previous file or the complete new
one; each carries a SHA-256 of its content, and a truncated or altered file is skipped in
favour of the previous good one.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

CHECKPOINT_FORMAT = 1
_PREFIX = "ckpt-"
_SUFFIX = ".json"


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


def training_key(**inputs: Any) -> str:
    """Key of a training job: a digest of its JSON-able inputs and :func:`code_version`.

    Args:
        **inputs: Everything the trained result depends on (data fingerprints, configuration,
            seed).

    Returns:
        A hex digest usable as a folder name.
    """
    return canonical_digest({"inputs": inputs, "code_version": code_version()})


class CheckpointStore:
    """The checkpoints of one training job.

    Args:
        root: Folder holding the checkpoints of all jobs.
        key: The job's key (:func:`training_key`); its checkpoints live in ``root/key``.
        every: Iterations between snapshots.
        keep: Snapshots kept (the newest ones); older ones are removed after each save.

    Attributes:
        rejected: Paths of snapshots skipped by :meth:`load_latest` as truncated or corrupt.
    """

    def __init__(self, root: str | Path, key: str, every: int = 10, keep: int = 2) -> None:
        if every < 1 or keep < 1:
            raise ValueError("`every` and `keep` must be at least 1")
        self.folder = Path(root) / key
        self.key = key
        self.every = every
        self.keep = keep
        self.rejected: list[Path] = []

    def due(self, iteration: int, last: int) -> bool:
        """Whether a snapshot is due after ``iteration`` of ``last``."""
        return iteration % self.every == 0 or iteration == last

    def paths(self) -> list[Path]:
        """Snapshot files, oldest first."""
        if not self.folder.is_dir():
            return []
        return sorted(self.folder.glob(f"{_PREFIX}*{_SUFFIX}"))

    def save(self, iteration: int, state: dict[str, Any]) -> Path:
        """Write a snapshot atomically (temporary file, fsync, rename) and prune old ones.

        Args:
            iteration: Iterations completed.
            state: JSON-able training state.

        Returns:
            The snapshot's path.
        """
        self.folder.mkdir(parents=True, exist_ok=True)
        body = {"format": CHECKPOINT_FORMAT, "key": self.key, "iteration": iteration}
        body["state"] = state
        # Serialised once: the file embeds the canonical text its checksum is taken over.
        canonical = canonical_json(body)
        digest = hashlib.sha256(canonical.encode()).hexdigest()
        text = f'{{"body":{canonical},"sha256":"{digest}"}}'
        target = self.folder / f"{_PREFIX}{iteration:09d}{_SUFFIX}"
        handle, temporary = tempfile.mkstemp(dir=self.folder, prefix=".tmp-", suffix=_SUFFIX)
        try:
            with os.fdopen(handle, "w") as stream:
                stream.write(text)
                stream.flush()
                os.fsync(stream.fileno())
            os.replace(temporary, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise
        _fsync_folder(self.folder)
        for old in self.paths()[: -self.keep]:
            with contextlib.suppress(OSError):
                old.unlink()
        return target

    def load_latest(self) -> tuple[int, dict[str, Any]] | None:
        """The newest snapshot that passes its checksum, or ``None``.

        Returns:
            ``(iteration, state)`` of the newest good snapshot; bad ones are listed in
            :attr:`rejected`.
        """
        for path in reversed(self.paths()):
            body = self._read(path)
            if body is None:
                self.rejected.append(path)
                continue
            return int(body["iteration"]), body["state"]
        return None

    def _read(self, path: Path) -> dict[str, Any] | None:
        try:
            document = json.loads(path.read_text())
            body = document["body"]
            if canonical_digest(body) != document["sha256"]:
                return None
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if body.get("format") != CHECKPOINT_FORMAT or body.get("key") != self.key:
            return None
        return dict(body)

    def clear(self) -> None:
        """Remove every snapshot of this job."""
        shutil.rmtree(self.folder, ignore_errors=True)


def _fsync_folder(folder: Path) -> None:
    # Makes the rename itself durable; not every platform can open a directory.
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)
