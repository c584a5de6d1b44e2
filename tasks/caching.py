"""Result caching for the expensive steps: stable keys, persisted results, one run at a time.

A cached task's key is a digest of its task source, the core's code version and its inputs,
where arrays and frames are represented by content fingerprints (never by object identity or
pickles), pydantic configurations by their JSON. Results are persisted in Prefect's result
storage (``PREFECT_LOCAL_STORAGE_PATH``), so a re-run in another process finds them.

Two runs that need the same result at once are serialised: the cache policy runs at the
``SERIALIZABLE`` isolation level with :class:`FlockLockManager`, so the second waits for the
first and then reads its result instead of computing it again. The lock is an OS file lock,
released by the kernel when its holder dies, so a killed run never blocks later ones.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import time
from pathlib import Path
from typing import Any, TypeVar

from prefect.cache_policies import TASK_SOURCE, CacheKeyFnPolicy, CachePolicy
from prefect.settings import get_current_settings
from prefect.transactions import IsolationLevel
from pydantic import BaseModel

from qmlops.hashing import canonical_digest, code_version

T = TypeVar("T")
_POLL_S = 0.1


def stable_inputs_key(context: Any, parameters: dict[str, Any]) -> str:
    """Cache key of a task's inputs (plus the core's code version).

    Objects with a ``fingerprint`` attribute (datasets, prepared data) count by that
    fingerprint; pydantic models by their JSON dump; everything else must be JSON-able.
    """
    del context
    return canonical_digest(
        {
            "code_version": code_version(),
            "inputs": {name: _stable(value) for name, value in sorted(parameters.items())},
        }
    )


def _stable(value: Any) -> Any:
    fingerprint = getattr(value, "fingerprint", None)
    if isinstance(fingerprint, str):
        return {"fingerprint": fingerprint}
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, dict):
        return {str(k): _stable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_stable(v) for v in value]
    if value is None or isinstance(value, str | int | float | bool):
        return value
    raise TypeError(f"no stable cache key for {type(value).__name__}")


class FlockLockManager:
    """Prefect lock manager backed by ``fcntl.flock`` on one file per key.

    Prefect's own file-system lock manager leaves a lock file behind when its holder is
    killed, and later runs then wait forever; the kernel releases an ``flock`` with the
    process. Locks are exclusive across processes and across threads of one process.

    Args:
        folder: Where the lock files live.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self._held: dict[str, tuple[str, int]] = {}

    def _path(self, key: str) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        return self.folder / f"{key}.lock"

    def _try(self, key: str) -> int | None:
        descriptor = os.open(self._path(key), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(descriptor)
            return None
        return descriptor

    def acquire_lock(
        self,
        key: str,
        holder: str,
        acquire_timeout: float | None = None,
        hold_timeout: float | None = None,
    ) -> bool:
        """Take the lock for ``key``, waiting up to ``acquire_timeout`` seconds (forever)."""
        del hold_timeout  # the kernel releases the lock when the holder dies
        if self.is_lock_holder(key, holder):
            return True
        deadline = None if acquire_timeout is None else time.monotonic() + acquire_timeout
        while True:
            descriptor = self._try(key)
            if descriptor is not None:
                self._held[key] = (holder, descriptor)
                return True
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(_POLL_S)

    async def aacquire_lock(
        self,
        key: str,
        holder: str,
        acquire_timeout: float | None = None,
        hold_timeout: float | None = None,
    ) -> bool:
        """Async :meth:`acquire_lock`."""
        return await asyncio.to_thread(
            self.acquire_lock, key, holder, acquire_timeout, hold_timeout
        )

    def release_lock(self, key: str, holder: str) -> None:
        """Release the lock if ``holder`` holds it."""
        held = self._held.get(key)
        if held is None or held[0] != holder:
            raise ValueError(f"{holder!r} does not hold the lock for {key!r}")
        del self._held[key]
        fcntl.flock(held[1], fcntl.LOCK_UN)
        os.close(held[1])

    def is_locked(self, key: str) -> bool:
        """Whether anyone (this process included) holds the lock now."""
        if key in self._held:
            return True
        descriptor = self._try(key)
        if descriptor is None:
            return True
        fcntl.flock(descriptor, fcntl.LOCK_UN)
        os.close(descriptor)
        return False

    def is_lock_holder(self, key: str, holder: str) -> bool:
        """Whether ``holder`` holds the lock."""
        held = self._held.get(key)
        return held is not None and held[0] == holder

    def wait_for_lock(self, key: str, timeout: float | None = None) -> bool:
        """Wait until the lock is free; ``False`` if ``timeout`` passed first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.is_locked(key):
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(_POLL_S)
        return True

    async def await_for_lock(self, key: str, timeout: float | None = None) -> bool:
        """Async :meth:`wait_for_lock`."""
        return await asyncio.to_thread(self.wait_for_lock, key, timeout)


def cache_policy() -> CachePolicy:
    """Task source + stable inputs, serialised across processes with file locks.

    The lock folder sits beside Prefect's result storage, so every process that shares the
    results also shares the locks.
    """
    storage = Path(get_current_settings().results.local_storage_path).expanduser()
    policy = TASK_SOURCE + CacheKeyFnPolicy(cache_key_fn=stable_inputs_key)
    return policy.configure(
        isolation_level=IsolationLevel.SERIALIZABLE,
        lock_manager=FlockLockManager(storage.parent / f"{storage.name}-locks"),
    )


def cached(task: T, force: bool = False) -> T:
    """The task with the cache policy and persisted results; ``force`` recomputes and rewrites.

    Args:
        task: A Prefect task whose inputs :func:`stable_inputs_key` can key.
        force: Ignore cached results (the new result replaces them).

    Returns:
        A copy of the task configured for caching.
    """
    return task.with_options(  # type: ignore[attr-defined]
        cache_policy=cache_policy(), persist_result=True, refresh_cache=force
    )
