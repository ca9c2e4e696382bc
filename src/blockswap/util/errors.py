"""The one exception family the CLI turns into a one-line message and a non-zero exit."""

from __future__ import annotations

__all__ = ["BlockSwapError"]


class BlockSwapError(ValueError):
    """Bad input a user can fix: an impossible budget, an unreadable genotype, missing data."""
