"""Errors that are the user's to fix.

Anything raised as a `QuantaError` is shown to the user as it is (one line on the
command line, the `error` of a failed job in the service); anything else is a bug.
"""


class QuantaError(Exception):
    """A problem with the user's input, files or environment, stated so they can fix it."""


class Cancelled(QuantaError):
    """Training stopped because the caller asked for it (cooperative cancel)."""
