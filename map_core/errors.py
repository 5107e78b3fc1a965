"""Exceptions for bad user input: entry points print their message in one line, no traceback."""
from __future__ import annotations


class UserError(Exception):
    """Something the user must fix (a config value, a missing file, a bad checkpoint)."""


class ConfigError(UserError):
    """A config file or ``--set`` override is invalid; the message names key, file and a fix."""


class DataError(UserError, ValueError):
    """A dataset on disk is missing or malformed; the message names the file (and the sample index)."""
