"""Secret filtering: params and tags whose names or values look like secrets are never logged."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

SECRET_NAME = re.compile(
    r"pass(word|wd|phrase)?|secret|token|api[_.-]?key|credential|auth|private[_.-]?key|"
    r"access[_.-]?key|session[_.-]?key|cookie|signature",
    re.IGNORECASE,
)


def without_secrets(values: Mapping[str, str]) -> dict[str, str]:
    """Drop entries whose name looks like a secret or whose value is a secret's value.

    Names are matched by :data:`SECRET_NAME` (password, token, api key, ...); values are
    compared with the values of environment variables whose names match it (such as
    ``MLFLOW_TRACKING_PASSWORD``), so a secret copied under an innocent name is dropped too.
    """
    secrets = {
        value for name, value in os.environ.items() if SECRET_NAME.search(name) and len(value) > 3
    }
    return {
        key: value
        for key, value in values.items()
        if not SECRET_NAME.search(key) and not any(secret in value for secret in secrets)
    }
