"""Counts as users type and read them: `400k`, `1.6M`, `4e5` in, `404.2K`, `2.24M` out."""

from __future__ import annotations

import math
import re
from typing import Any

from .errors import BlockSwapError

__all__ = ["BudgetError", "parse_count", "parse_budget", "format_count", "budget_text", "whole_number"]

_SUFFIX = {"": 1, "k": 1_000, "m": 1_000_000, "g": 1_000_000_000}


class BudgetError(BlockSwapError):
    """A budget that cannot be parsed or reached."""


def parse_count(text: str | int | float, what: str = "budget") -> int:
    """Parse `400k`, `1.6M`, `400000` or `4e5` into a positive whole count; `what` names it in errors."""
    if isinstance(text, bool):
        raise BudgetError(f"{what} must be a number, got {text!r}")
    if isinstance(text, (int, float)):
        value = float(text)
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([kmg]?)\s*", text.lower())
        if not m:
            raise BudgetError(f"cannot parse {what} {text!r}; use e.g. 400k, 1.6M or 400000")
        value = float(m[1]) * _SUFFIX[m[2]]
    if not math.isfinite(value) or value < 1:
        raise BudgetError(f"{what} must be a positive count, got {text!r}")
    return int(round(value))


def parse_budget(text: str | int | float) -> int:
    """A parameter budget: `parse_count` with budget in its errors."""
    return parse_count(text, "budget")


def format_count(n: float) -> str:
    """404250 -> '404.2K', 2243546 -> '2.24M'."""
    if n >= 1e6:
        return f"{n / 1e6:.2f}M"
    if n >= 1e3:
        return f"{n / 1e3:.1f}K"
    return str(int(n))


def whole_number(value: Any, what: str, low: int = 1) -> int:
    """`value` as an int >= low (3 or 3.0), refusing floats with a fraction, bools, NaN and text; `what` names it."""
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise BlockSwapError(f"{what} must be a whole number, got {value!r}")
    if value < low:
        raise BlockSwapError(f"{what} must be at least {low}, got {value}")
    return value


def budget_text(n: int) -> str:
    """A budget as short, exact, folder-safe text: 200000 -> '200K', 25500 -> '25.5K', 1500000 -> '1.5M'."""
    for scale, suffix in ((1_000_000, "M"), (1_000, "K")):
        if n >= scale:
            return f"{n / scale:.6f}".rstrip("0").rstrip(".") + suffix
    return str(n)
