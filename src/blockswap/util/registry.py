"""`Registry`: the name table behind block types, backbones and scorers, so all three share one name rule,
one duplicate rule and one unknown-name error.

- Names are non-empty text of letters, digits, '_', '-' and '.'; a registry of templates (backbones) also
  takes `{placeholders}` and, as its lookups ignore case, lower-case names only.
- Registering an equal item again under its name is a no-op (a plugin imported twice is harmless); a
  different item under a taken name is refused.
- An unknown name is a BlockSwapError listing the valid choices.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Generic, TypeVar

from .errors import BlockSwapError

__all__ = ["Registry"]

T = TypeVar("T")

_NAME = re.compile(r"[\w.-]+")  # letters and digits of any script, '_', '-' and '.'
_PLACEHOLDER = re.compile(r"\{[a-z_]+\}")


class Registry(Mapping[str, T], Generic[T]):
    """Items of one `kind` by name, in registration order, with an optional help line each."""

    def __init__(self, kind: str, hint: str = "", templates: bool = False) -> None:
        self.kind, self.hint, self.templates = kind, hint, templates
        self._items: dict[str, T] = {}
        self._help: dict[str, str] = {}

    def check_name(self, name: object) -> str:
        """`name` if it follows the name rule, else a BlockSwapError saying the rule."""
        if not isinstance(name, str) or not name:
            valid = False
        elif self.templates:
            rest = _PLACEHOLDER.sub("", name)
            valid = name == name.lower() and (not rest or _NAME.fullmatch(rest) is not None)
        else:
            valid = _NAME.fullmatch(name) is not None
        if not valid:
            chars = "lower-case letters, digits, '_', '-', '.' and {placeholders}" if self.templates else \
                "letters, digits, '_', '-' and '.'"
            raise BlockSwapError(f"{self.kind} name {name!r} may hold {chars} only")
        return name  # type: ignore[return-value]

    def add(self, name: str, item: T, help: str = "") -> T:
        """Register `item` under `name` and return it; an equal item again is a no-op, a different one refused."""
        self.check_name(name)
        if name in self._items and (self._items[name] != item or self._help[name] != help):
            raise BlockSwapError(f"a different {self.kind} named {name!r} is already registered")
        self._items[name], self._help[name] = item, help
        return item

    def unknown(self, name: object) -> BlockSwapError:
        """The error for a name nothing is registered under, listing the valid choices."""
        hint = f" ({self.hint})" if self.hint else ""
        return BlockSwapError(f"unknown {self.kind} {name!r}; valid choices: {', '.join(self.choices())}{hint}")

    def choices(self) -> list[str]:
        """Every name, with its help in parentheses where it has one."""
        return [f"{n} ({h})" if h else n for n, h in self._help.items()]

    def copy(self) -> Registry[T]:
        """An independent registry with the same entries (for a test that registers and forgets)."""
        other: Registry[T] = Registry(self.kind, self.hint, self.templates)
        other._items, other._help = dict(self._items), dict(self._help)
        return other

    def __getitem__(self, name: str) -> T:
        try:
            return self._items[name]
        except (KeyError, TypeError):
            raise self.unknown(name) from None

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self._items

    def get(self, name: str, default: T | None = None) -> T | None:  # type: ignore[override]
        return self._items.get(name, default) if isinstance(name, str) else default

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)
