"""Typed errors raised by the core.

Every error caused by the user's input derives from :class:`InputError` (itself a
``ValueError``), so callers can tell bad input, which must never be retried, from transient
failures, which may be.
"""

from __future__ import annotations


class InputError(ValueError):
    """The user's input (data, configuration or model file) is invalid. Never retried."""


class DatasetError(InputError):
    """A dataset cannot be loaded or does not fit the requested training set-up."""


class UnsafePathError(DatasetError):
    """A data path points outside the configured data root or uses a disallowed form."""


class ConfigurationError(InputError):
    """A configuration value is out of range or names an unknown choice."""


class SizeLimitError(InputError):
    """A circuit or training job would exceed the configured memory or evaluation limits."""


class SchemaMismatchError(DatasetError):
    """Input columns to score do not match the model's signature (missing, extra or mistyped)."""


class ModelNotFoundError(InputError):
    """The registry holds no such model, version or ``champion`` alias."""


class SimulationError(RuntimeError):
    """The simulator failed or returned invalid numbers (possibly transient)."""


class ModelFormatError(InputError):
    """A serialized model is malformed, incompatible or fails its integrity check."""
