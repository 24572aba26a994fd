"""Command-line option types shared by the local CLI (`quanta`) and `quanta-client`."""

from __future__ import annotations

import argparse


def positive_int(text: str) -> int:
    """An argparse type for the seed's "strictly positive" counts (runs, epochs, samples)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not an integer") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be strictly positive, got {value}")
    return value
