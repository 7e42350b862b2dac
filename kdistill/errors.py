"""Errors a user can act on. The CLI prints them as one line and exits non-zero."""


class KdistillError(Exception):
    """Base class: the message names the file or key and says what is wrong."""


class ConfigError(KdistillError):
    """A config key is unknown, has the wrong type or an invalid value."""


class DataError(KdistillError):
    """The data folder is missing, empty, inconsistent or unreadable."""


class CheckpointError(KdistillError):
    """A checkpoint directory is missing, incomplete or does not match the data."""
