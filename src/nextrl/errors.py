"""User-facing failures. The CLI prints a `NextRLError` as one message naming the file, key or path and what to
do, and exits with its `exit_code` (2: usage or configuration, 1: a failure while running). Any other exception
is a bug and keeps its traceback, so that it stays visible."""

from __future__ import annotations


class NextRLError(Exception):
    """A failure the user can act on; the message says what and where."""

    exit_code = 1


class UsageError(NextRLError):
    """A wrong command line or configuration."""

    exit_code = 2


class ConfigError(UsageError, ValueError):
    """A configuration problem; the message names the key and where it came from."""


class RunFolderError(NextRLError):
    """The run folder cannot be used as asked (already holds a run, or holds a different one)."""


class DataError(NextRLError, ValueError):
    """The data cannot give what the run needs (no positions, no held-out split, …)."""
