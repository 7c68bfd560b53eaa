"""Errors a user can cause.

Every exception the library raises on purpose for bad input derives from
:class:`RBPError`; the command line turns it into one line on stderr and a
non-zero exit status, never a traceback.
"""


class RBPError(Exception):
    """Base class of all user-facing errors of `rbp`."""


class ConfigError(RBPError, ValueError):
    """An unknown algorithm or option, or an impossible combination."""


class UnsupportedModelError(RBPError, TypeError):
    """A model contains layers the learning channel cannot handle."""


class DataError(RBPError):
    """A dataset is missing, corrupt, truncated or cannot be downloaded."""
