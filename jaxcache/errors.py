"""The exception hierarchy. The CLI turns each into one line and an exit code."""

from __future__ import annotations


class JaxCacheError(Exception):
    """Base class for every error jaxcache raises on purpose.

    Attributes:
        exit_code: the process exit code the CLI uses for this error.
    """

    exit_code = 1


class UsageError(JaxCacheError):
    """A bad value given by the user: a size, a duration, a config key, a glob."""

    exit_code = 2


class CacheDirError(JaxCacheError):
    """The cache folder is missing, not a folder, or cannot be read or written."""


class NotACacheError(CacheDirError):
    """The folder does not look like a JAX compilation cache, so nothing is touched."""


class ConfirmationRequired(JaxCacheError):
    """A destructive command was run without a terminal and without ``--yes``."""

    exit_code = 2


class CommandError(JaxCacheError):
    """`jaxcache run` could not start the command; exit codes as a shell's (127: not found, 126: not runnable)."""

    def __init__(self, message: str, *, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


class Declined(JaxCacheError):
    """The user answered no at a confirmation prompt: nothing was changed."""
