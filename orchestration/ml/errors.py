"""Errors that retrying cannot fix, or rarely does."""


class ConfigError(ValueError):
    """Bad configuration or data (unknown model, missing column, single-class labels...).

    The message names the field and the fix. Workers turn it into a non-retryable Temporal
    error, so a bad row fails at once instead of burning retries.
    """


class StorageError(OSError):
    """The checkpoint store cannot take this run's checkpoints (read-only, unwritable, full).

    Unlike ConfigError it may be local to one worker (another host may mount a healthy store),
    so the activity retries it a few times before giving up; the message names the folder and
    the fix.
    """
