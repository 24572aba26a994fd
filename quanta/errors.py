"""Errors that are the user's to fix (see `quanta_spec.errors`)."""

from quanta_spec.errors import QuantaError


class Cancelled(QuantaError):
    """Training stopped because the caller asked for it (cooperative cancel)."""


__all__ = ["Cancelled", "QuantaError"]
