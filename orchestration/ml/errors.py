"""Errors that retrying cannot fix."""


class ConfigError(ValueError):
    """Bad configuration or data (unknown model, missing column, single-class labels...).

    The message names the field and the fix. Workers turn it into a non-retryable Temporal
    error, so a bad row fails at once instead of burning retries.
    """
