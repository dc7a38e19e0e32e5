"""User-facing errors of the SR core.

Every error a user can cause (bad input, wrong checkpoint, unknown name) is a ``UserError`` whose message is
one line: the cause, then the fix. The CLI prints it without a traceback and exits with code 2.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input, reported as one line: cause, then fix."""


class DataError(UserError):
    """An unreadable, corrupt or unusable data file or folder."""


class CheckpointError(UserError):
    """A checkpoint that is missing, unreadable or of a different architecture."""


class ConfigError(UserError):
    """An unknown name, knob or value in a configuration."""
