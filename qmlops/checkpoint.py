"""Training checkpoints: atomic, checksummed snapshots of an optimizer's state.

A :class:`CheckpointStore` keeps the last few snapshots of one training job in a folder named
by a key derived from everything the result depends on (data, configuration, seed, code
version; see :func:`training_key`). A snapshot is written to a temporary file, flushed to
disk and renamed into place, so a reader sees either the previous file or the complete new
one; each carries a SHA-256 of its content, and a truncated or altered file is skipped in
favour of the previous good one.

What only grows (a training's per-iteration history) goes to the job's append-only log
instead: each snapshot records how many bytes of the log it covers and their SHA-256, so a
save writes only the records added since the previous one (rewriting the whole history made
a training's checkpoints cost the square of its length) and a snapshot whose log was damaged
is skipped like a damaged snapshot.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from qmlops.hashing import canonical_digest, canonical_json, code_version

CHECKPOINT_FORMAT = 2
_PREFIX = "ckpt-"
_SUFFIX = ".json"
_LOG = "log.jsonl"


def training_key(**inputs: Any) -> str:
    """Key of a training job: a digest of its JSON-able inputs and :func:`code_version`.

    Args:
        **inputs: Everything the trained result depends on (data fingerprints, configuration,
            seed).

    Returns:
        A hex digest usable as a folder name.
    """
    return canonical_digest({"inputs": inputs, "code_version": code_version()})


class Snapshot(NamedTuple):
    """A loaded snapshot: iterations done, the saved state and the log records it covers."""

    iteration: int
    state: dict[str, Any]
    log: list[dict[str, Any]]


class CheckpointStore:
    """The checkpoints of one training job.

    Args:
        root: Folder holding the checkpoints of all jobs.
        key: The job's key (:func:`training_key`); its checkpoints live in ``root/key``.
        every: Iterations between snapshots.
        keep: Snapshots kept (the newest ones); older ones are removed after each save.

    Attributes:
        rejected: Paths of snapshots skipped by :meth:`load_latest` as truncated or corrupt
            (the snapshot itself or the part of the log it covers).
    """

    def __init__(self, root: str | Path, key: str, every: int = 10, keep: int = 2) -> None:
        if every < 1 or keep < 1:
            raise ValueError("`every` and `keep` must be at least 1")
        self.folder = Path(root) / key
        self.key = key
        self.every = every
        self.keep = keep
        self.rejected: list[Path] = []
        # The log as the newest snapshot written or loaded here covers it; a save first cuts
        # the file back to this (dropping what a crash left after the last snapshot).
        self._log_bytes = 0
        self._log_records = 0
        self._log_digest = hashlib.sha256()

    def due(self, iteration: int, last: int) -> bool:
        """Whether a snapshot is due after ``iteration`` of ``last``."""
        return iteration % self.every == 0 or iteration == last

    def paths(self) -> list[Path]:
        """Snapshot files, oldest first."""
        if not self.folder.is_dir():
            return []
        return sorted(self.folder.glob(f"{_PREFIX}*{_SUFFIX}"))

    def save(
        self, iteration: int, state: dict[str, Any], log: Sequence[Mapping[str, Any]] = ()
    ) -> Path:
        """Append to the log, then write a snapshot atomically (temporary file, fsync, rename).

        Old snapshots are pruned afterwards.

        Args:
            iteration: Iterations completed.
            state: JSON-able training state.
            log: JSON-able records added since the previous save (or since the snapshot
                :meth:`load_latest` returned); the snapshot covers the log up to them.

        Returns:
            The snapshot's path.
        """
        self.folder.mkdir(parents=True, exist_ok=True)
        self._append(log)
        body = {"format": CHECKPOINT_FORMAT, "key": self.key, "iteration": iteration}
        body["state"] = state
        body["log"] = {
            "bytes": self._log_bytes,
            "records": self._log_records,
            "sha256": self._log_digest.hexdigest(),
        }
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

    def _append(self, records: Sequence[Mapping[str, Any]]) -> None:
        data = "".join(canonical_json(record) + "\n" for record in records).encode()
        descriptor = os.open(self.folder / _LOG, os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            os.ftruncate(descriptor, self._log_bytes)
            os.lseek(descriptor, self._log_bytes, os.SEEK_SET)
            view = memoryview(data)
            while view:
                view = view[os.write(descriptor, view) :]
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
        self._log_bytes += len(data)
        self._log_records += len(records)
        self._log_digest.update(data)

    def load_latest(self) -> Snapshot | None:
        """The newest snapshot that passes its checksum and its log's, or ``None``.

        Later saves continue the log from the returned snapshot.

        Returns:
            The newest good snapshot; bad ones are listed in :attr:`rejected`.
        """
        log = self._read_log()
        for path in reversed(self.paths()):
            body = self._read(path)
            records = None if body is None else _log_prefix(log, body["log"])
            if body is None or records is None:
                self.rejected.append(path)
                continue
            covered = log[: body["log"]["bytes"]]
            self._log_bytes, self._log_records = len(covered), len(records)
            self._log_digest = hashlib.sha256(covered)
            return Snapshot(int(body["iteration"]), body["state"], records)
        self._log_bytes, self._log_records, self._log_digest = 0, 0, hashlib.sha256()
        return None

    def _read_log(self) -> bytes:
        try:
            return (self.folder / _LOG).read_bytes()
        except OSError:
            return b""

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
        """Remove every snapshot and the log of this job."""
        shutil.rmtree(self.folder, ignore_errors=True)
        self._log_bytes, self._log_records, self._log_digest = 0, 0, hashlib.sha256()


def _log_prefix(log: bytes, covered: Any) -> list[dict[str, Any]] | None:
    """The records of the first ``covered["bytes"]`` bytes of the log, if they check out."""
    try:
        size, count, digest = int(covered["bytes"]), int(covered["records"]), covered["sha256"]
        prefix = log[:size]
        if len(prefix) != size or hashlib.sha256(prefix).hexdigest() != digest:
            return None
        records = [json.loads(line) for line in prefix.decode().splitlines()]
    except (KeyError, TypeError, ValueError):
        return None
    return records if len(records) == count else None


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
