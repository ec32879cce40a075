"""Errors that mean "the user asked for something we cannot do", not "the code is broken".

The CLI prints these as one line and exits with code 2; everything else is a bug and keeps
its traceback.
"""


class UserError(Exception):
    """A bad request from the user: the message says what is wrong and how to fix it."""


class CorruptFileError(UserError):
    """A data or checkpoint file that cannot be read (truncated, wrong format)."""


class ConfigMismatchError(UserError):
    """A checkpoint whose config does not match the data, env or architecture asked for."""
