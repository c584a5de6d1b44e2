"""Prefect tasks: thin wrappers over the ``qmlops`` core with retries, caching and names."""
